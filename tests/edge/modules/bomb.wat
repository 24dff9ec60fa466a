;; Hostile: grows its memory until refused, then keeps asking (stopped at the memory limit).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (drop (memory.grow (i32.const 16)))
      (br $grow))))
