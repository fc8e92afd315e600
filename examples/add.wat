;; add.wat - plain exports for Spear's `wasm` runtime.
;;
;; Deploy with handler "add" (or "fib"): the instance is created once and
;; reused; each invocation calls the export with the numeric args and the
;; output is the result as JSON text, e.g. args [2, 3] -> b"5".
(module
  ;; add(a: i64, b: i64) -> i64
  (func (export "add") (param $a i64) (param $b i64) (result i64)
    (i64.add (local.get $a) (local.get $b)))

  ;; fib(n: i32) -> i64, iterative
  (func (export "fib") (param $n i32) (result i64)
    (local $a i64)
    (local $b i64)
    (local $t i64)
    (local.set $b (i64.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
        (local.set $t (i64.add (local.get $a) (local.get $b)))
        (local.set $a (local.get $b))
        (local.set $b (local.get $t))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $a))

  ;; divmod(a: i32, b: i32) -> (i32, i32): a multi-value result, output "[q,r]"
  (func (export "divmod") (param $a i32) (param $b i32) (result i32 i32)
    (i32.div_s (local.get $a) (local.get $b))
    (i32.rem_s (local.get $a) (local.get $b)))

  ;; a mutable counter, to show that the instance (and its state) is reused
  (global $calls (mut i64) (i64.const 0))
  (func (export "count") (result i64)
    (global.set $calls (i64.add (global.get $calls) (i64.const 1)))
    (global.get $calls))

  ;; scale(x: f64, k: f32) -> f64
  (func (export "scale") (param $x f64) (param $k f32) (result f64)
    (f64.mul (local.get $x) (f64.promote_f32 (local.get $k))))
)
