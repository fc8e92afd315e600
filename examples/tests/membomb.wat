;; membomb.wat - grows linear memory 1 MiB at a time until memory.grow fails,
;; then traps (as an allocator aborting on OOM would). `pages` returns the
;; current size in pages.
(module
  (memory (export "memory") 1)
  (func $bomb
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
  (func (export "_start") (call $bomb))
  (func (export "bomb") (result i32) (call $bomb) (i32.const 0))
  (func (export "pages") (result i32) (memory.size))
)
