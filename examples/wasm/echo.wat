;; A WASM tool in WebAssembly text: answers {"echo": <its arguments>}.
;; ABI (WASI preview 1): the arguments as JSON on stdin, the result on stdout, exit 0.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  ;; 0..16: iovec scratch; 16..20: byte count; 32: the prefix; 64: the suffix.
  (data (i32.const 32) "{\"echo\":")
  (data (i32.const 64) "}")
  ;; Input goes at 1024, up to 64 KiB (more is cut: this is an example).
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))
      (then (call $proc_exit (i32.const 1)))))
  (func (export "_start")
    (local $total i32) (local $n i32)
    (loop $more
      (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $total)))
      (i32.store (i32.const 4) (i32.sub (i32.const 65536) (local.get $total)))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16))
        (then (call $proc_exit (i32.const 1))))
      (local.set $n (i32.load (i32.const 16)))
      (local.set $total (i32.add (local.get $total) (local.get $n)))
      (br_if $more (i32.and (i32.ne (local.get $n) (i32.const 0))
                            (i32.lt_u (local.get $total) (i32.const 65536)))))
    (call $write (i32.const 32) (i32.const 8))
    (call $write (i32.const 1024) (local.get $total))
    (call $write (i32.const 64) (i32.const 1))))
