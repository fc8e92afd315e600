;; trap.wat - ordinary traps: `_start` hits unreachable, `divzero` divides by 0.
(module
  (func (export "_start") unreachable)
  (func (export "divzero") (param $a i32) (result i32)
    (i32.div_s (local.get $a) (i32.const 0)))
)
