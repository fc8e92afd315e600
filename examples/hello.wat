;; hello.wat - a WASI command for Spear's `wasm` runtime.
;;
;; Reads all of stdin (the invocation input) and writes "hello, <input>" to
;; stdout (the invocation output); with empty input it writes "hello, world".
;; It also writes one line to stderr, which Spear delivers as a log line.
;;
;; Deploy with handler "" (or "_start"): the module is run as a WASI command.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))

  ;; page 0: constants and scratch; pages 1..16: the input buffer (1 MiB)
  (memory (export "memory") 17)

  ;; 0..8     the iovec for writes
  ;; 16..24   the iovec for reads
  ;; 24..28   nread / nwritten
  (data (i32.const 64) "hello, ")
  (data (i32.const 80) "world")
  (data (i32.const 96) "hello.wat: greeting written\n")

  (global $buf i32 (i32.const 65536))
  (global $cap i32 (i32.const 1048576))

  (func $main (export "_start")
    (local $len i32)
    (local $n i32)
    ;; read stdin until EOF or the buffer is full
    (block $done
      (loop $read
        (br_if $done (i32.ge_u (local.get $len) (global.get $cap)))
        (i32.store (i32.const 16) (i32.add (global.get $buf) (local.get $len)))
        (i32.store (i32.const 20) (i32.sub (global.get $cap) (local.get $len)))
        (br_if $done
          (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
        (local.set $n (i32.load (i32.const 24)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $len (i32.add (local.get $len) (local.get $n)))
        (br $read)))
    (call $write_all (i32.const 1) (i32.const 64) (i32.const 7))
    ;; the input, or "world" when it is empty
    (if (i32.eqz (local.get $len))
      (then (call $write_all (i32.const 1) (i32.const 80) (i32.const 5)))
      (else (call $write_all (i32.const 1) (global.get $buf) (local.get $len))))
    ;; one log line on stderr
    (call $write_all (i32.const 2) (i32.const 96) (i32.const 28)))

  ;; write all of [ptr, ptr+len) to fd, looping over partial writes
  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32)
    (local $n i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (br_if $done
          (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 24)))
        (local.set $n (i32.load (i32.const 24)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br $more))))
)
