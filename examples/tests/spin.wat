;; spin.wat - runaway code: `_start` and `spin` loop forever; `ok` returns 1.
(module
  (func $forever (loop $l (br $l)))
  (func (export "_start") (call $forever))
  (func (export "spin") (result i32) (call $forever) (i32.const 0))
  (func (export "ok") (result i32) (i32.const 1))
)
