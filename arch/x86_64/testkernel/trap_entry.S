// Interrupt and exception entry stubs for all 256 IDT vectors.
//
// Each stub makes the stack look the same (a dummy error code where the CPU pushes none, then the
// vector number) and jumps to trap_common, which saves the general registers into a TrapFrame
// (traps.h) and calls x86_trap_handler(frame). If the handler returns, the registers are restored
// and the stub returns with iretq. trap_stub_table (rodata) lists the 256 stub addresses.

// Vectors for which the CPU pushes an error code: #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14,
// #AC 17, #CP 21, #VC 29, #SX 30.
#define HAS_ERROR_CODE(v) \
  ((v) == 8 || (v) == 10 || (v) == 11 || (v) == 12 || (v) == 13 || (v) == 14 || (v) == 17 || \
   (v) == 21 || (v) == 29 || (v) == 30)

  .text
  .p2align 4
trap_stubs:
  .set vector, 0
  .rept 256
  .p2align 4
1:
  .if !HAS_ERROR_CODE(vector)
  pushq $0
  .endif
  pushq $vector
  jmp trap_common
  .pushsection .rodata
  .p2align 3
  .if vector == 0
  .global trap_stub_table
trap_stub_table:
  .endif
  .quad 1b
  .popsection
  .set vector, vector + 1
  .endr

trap_common:
  pushq %rax
  pushq %rbx
  pushq %rcx
  pushq %rdx
  pushq %rsi
  pushq %rdi
  pushq %rbp
  pushq %r8
  pushq %r9
  pushq %r10
  pushq %r11
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  cld
  mov %rsp, %rdi            // 16-byte aligned here: 22 quadwords on an aligned entry stack.
  call x86_trap_handler
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %r11
  popq %r10
  popq %r9
  popq %r8
  popq %rbp
  popq %rdi
  popq %rsi
  popq %rdx
  popq %rcx
  popq %rbx
  popq %rax
  add $16, %rsp             // vector and error code
  iretq
