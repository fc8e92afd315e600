;; readfile.wat - a WASI command that opens "secret.txt" in the first
;; preopened directory (fd 3) and copies it to stdout. Without a preopen (no
;; "dir:" grant) the open fails: it writes the errno to stderr and exits 2.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "secret.txt")
  (data (i32.const 96) "readfile.wat: open failed, errno ")
  (func (export "_start")
    (local $err i32)
    (local $fd i32)
    ;; path_open(dirfd=3, dirflags=0, path, len, oflags=0,
    ;;           rights=fd_read(2), inheriting=0, fdflags=0, &fd)
    (local.set $err
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 10)
        (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)))
    (if (local.get $err)
      (then
        ;; stderr: message + two decimal digits of errno + newline
        (i32.store8 (i32.const 129) (i32.add (i32.const 48) (i32.div_u (local.get $err) (i32.const 10))))
        (i32.store8 (i32.const 130) (i32.add (i32.const 48) (i32.rem_u (local.get $err) (i32.const 10))))
        (i32.store8 (i32.const 131) (i32.const 10))
        (i32.store (i32.const 0) (i32.const 96))
        (i32.store (i32.const 4) (i32.const 36))
        (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 24)))
        (call $proc_exit (i32.const 2))))
    (local.set $fd (i32.load (i32.const 32)))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (drop (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 24)))
    (i32.store (i32.const 4) (i32.load (i32.const 24)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 24))))
)
