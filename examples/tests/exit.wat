;; exit.wat - a WASI command that exits with a chosen code.
;; The first byte of stdin, a digit, is the exit code ("3" -> proc_exit(3));
;; with empty input the code is 3. Writes "bye" to stdout and a line to stderr.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "bye")
  (data (i32.const 80) "exit.wat: exiting\n")
  (func (export "_start")
    (local $code i32)
    (local.set $code (i32.const 3))
    (i32.store (i32.const 0) (i32.const 256))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 24)))
    (if (i32.eq (i32.load (i32.const 24)) (i32.const 1))
      (then (local.set $code (i32.sub (i32.load8_u (i32.const 256)) (i32.const 48)))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 24)))
    (i32.store (i32.const 0) (i32.const 80))
    (i32.store (i32.const 4) (i32.const 18))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 24)))
    (call $proc_exit (local.get $code)))
)
