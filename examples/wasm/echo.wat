;; A WASM tool in WebAssembly text: answers {"echo": <its arguments>}.
;; ABI (WASI preview 1): the arguments as JSON on stdin, the result on stdout, exit 0.
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  ;; 0..8: an iovec; 8..12: a byte count. The answer is built at 1024: the prefix, the
  ;; input read right after it (up to 64 KiB; more is cut: this is an example), "}".
  (data (i32.const 1024) "{\"echo\":")
  (global $START i32 (i32.const 1032))
  (global $ROOM i32 (i32.const 65536))
  (func $iovec (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len)))
  (func (export "_start")
    (local $total i32) (local $n i32) (local $end i32) (local $at i32)
    (loop $more
      (call $iovec (i32.add (global.get $START) (local.get $total))
                   (i32.sub (global.get $ROOM) (local.get $total)))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1))))
      (local.set $n (i32.load (i32.const 8)))
      (local.set $total (i32.add (local.get $total) (local.get $n)))
      (br_if $more (i32.and (i32.ne (local.get $n) (i32.const 0))
                            (i32.lt_u (local.get $total) (global.get $ROOM)))))
    (local.set $end (i32.add (global.get $START) (local.get $total)))
    (i32.store8 (local.get $end) (i32.const 125))  ;; "}"
    (local.set $end (i32.add (local.get $end) (i32.const 1)))
    ;; Write it all: a write may take only part of it.
    (local.set $at (i32.const 1024))
    (loop $write
      (call $iovec (local.get $at) (i32.sub (local.get $end) (local.get $at)))
      (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
        (then (call $proc_exit (i32.const 1))))
      (local.set $at (i32.add (local.get $at) (i32.load (i32.const 8))))
      (br_if $write (i32.lt_u (local.get $at) (local.get $end))))))
