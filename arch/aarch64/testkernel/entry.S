// AArch64 entry for QEMU virt's -kernel ELF boot.
//
// QEMU starts CPU 0 at _start with the MMU off, at EL1 (EL2 with virtualization=on, EL3 with
// secure=on); the other CPUs stay powered off until a PSCI CPU_ON, but any CPU that arrives here
// with a non-zero affinity is parked anyway. x0 may hold the device tree address when a boot
// loader started us; QEMU's bare-metal ELF boot leaves it 0 and puts the DTB at the base of RAM.
//
// _start: drop to EL1 if needed, mask interrupts, set the stacks (kernel code on SP_EL0,
// exceptions on SP_EL1), zero .bss, install the exception vectors, then call aarch64_boot(x0)
// (arch/aarch64/testkernel/boot.cc), which never returns.
//
// aarch64_secondary_entry: where PSCI CPU_ON starts the other CPUs (arch/aarch64/testkernel/
// smp.cc), MMU off, x0 = the CPU's PerCpu (identity-mapped, so its address is physical too).

#define SPSR_EL1H_MASKED 0x3c5   // EL1h, D A I F masked
#define HCR_EL2_RW (1 << 31)    // EL1 is AArch64
#define SCTLR_EL1_RES1 0x30d00800
// PerCpu field offsets (testkernel/percpu.h, checked by static_asserts in testkernel/smp.cc).
#define PERCPU_TRAP_STACK 8
#define PERCPU_STACK 16

  .section .text.boot, "ax"
  .global _start
_start:
  mov x19, x0                   // Possible DTB pointer from a boot loader.
  mrs x1, mpidr_el1
  ldr x2, =0xff00ffffff         // Aff3..Aff0
  and x1, x1, x2
  cbnz x1, park

  mrs x1, CurrentEL
  lsr x1, x1, #2
  cmp x1, #3
  b.eq from_el3
  cmp x1, #2
  b.eq from_el2
  b at_el1

from_el3:
  ldr x1, =SCTLR_EL1_RES1
  msr sctlr_el1, x1
  mov x1, #((1 << 10) | (1 << 0) | (3 << 4))  // RW, NS, RES1
  msr scr_el3, x1
  mov x1, #SPSR_EL1H_MASKED
  msr spsr_el3, x1
  adr x1, at_el1
  msr elr_el3, x1
  eret

from_el2:
  mov x1, #HCR_EL2_RW
  msr hcr_el2, x1
  mov x1, #3                    // EL1PCTEN | EL1PCEN: EL1 may use the counters and timers.
  msr cnthctl_el2, x1
  msr cntvoff_el2, xzr
  mov x1, #0x33ff               // CPTR_EL2: RES1 bits, no FP/SIMD traps.
  msr cptr_el2, x1
  ldr x1, =SCTLR_EL1_RES1
  msr sctlr_el1, x1
  mov x1, #SPSR_EL1H_MASKED
  msr spsr_el2, x1
  adr x1, at_el1
  msr elr_el2, x1
  eret

at_el1:
  msr daifset, #0xf
  msr tpidr_el1, xzr            // No per-CPU pointer until smp_init_boot_cpu installs one.
  // Exceptions run on their own stack (SP_EL1); the kernel runs on SP_EL0, whose stack sits
  // above an unmapped guard page. A stack overflow then faults into a handler with a good stack
  // and is reported like any other fault.
  ldr x1, =__exception_stack_top
  mov sp, x1
  msr spsel, #0
  ldr x1, =__boot_stack_top
  mov sp, x1
  // Zero .bss (8-byte aligned bounds; plain stores work with the MMU off).
  ldr x1, =__bss_start
  ldr x2, =__bss_end
1:
  cmp x1, x2
  b.hs 2f
  str xzr, [x1], #8
  b 1b
2:
  mov x1, #(3 << 20)            // CPACR_EL1.FPEN: no FP/SIMD traps (the kernel is built
  msr cpacr_el1, x1             // general-regs-only; this only avoids surprises).
  ldr x1, =aarch64_exception_vectors
  msr vbar_el1, x1
  isb
  mov x0, x19
  bl aarch64_boot
park:
  wfe
  b park

// ---------------------------------------------------------------------------------------------
// Secondary CPUs. With the MMU off every data access is Device memory: only aligned loads of the
// parameters (cleaned to the point of coherency by the boot CPU) until the MMU is on.
  .global aarch64_secondary_entry
aarch64_secondary_entry:
  mov x19, x0                   // PerCpu
  mrs x1, CurrentEL
  lsr x1, x1, #2
  cmp x1, #2
  b.ne secondary_el1
  mov x1, #HCR_EL2_RW
  msr hcr_el2, x1
  mov x1, #3
  msr cnthctl_el2, x1
  msr cntvoff_el2, xzr
  mov x1, #0x33ff
  msr cptr_el2, x1
  ldr x1, =SCTLR_EL1_RES1
  msr sctlr_el1, x1
  mov x1, #SPSR_EL1H_MASKED
  msr spsr_el2, x1
  adr x1, secondary_el1
  msr elr_el2, x1
  eret
secondary_el1:
  msr daifset, #0xf
  mov x1, #(3 << 20)
  msr cpacr_el1, x1
  ldr x1, =aarch64_exception_vectors
  msr vbar_el1, x1
  ldr x2, =aarch64_secondary_params
  ldp x3, x4, [x2]              // MAIR_EL1, TCR_EL1
  ldp x5, x6, [x2, #16]         // TTBR0_EL1, TTBR1_EL1
  ldr x7, [x2, #32]             // SCTLR_EL1
  msr mair_el1, x3
  msr tcr_el1, x4
  msr ttbr0_el1, x5
  msr ttbr1_el1, x6
  isb
  tlbi vmalle1
  dsb nsh
  isb
  msr sctlr_el1, x7
  isb
  // MMU and caches on, same tables as the boot CPU.
  ldr x1, [x19, #PERCPU_TRAP_STACK]
  mov sp, x1                    // SP_EL1: exceptions
  msr spsel, #0
  ldr x1, [x19, #PERCPU_STACK]
  mov sp, x1                    // SP_EL0: kernel code
  msr tpidr_el1, x19
  mov x0, x19
  bl aarch64_secondary_boot
1:
  wfe
  b 1b

// ---------------------------------------------------------------------------------------------
// Exception vectors. Every exception but an IRQ taken from the kernel's own code is fatal: save
// the registers in a frame on the current stack and call aarch64_trap(kind, frame), which prints
// them and stops QEMU. Frame layout (must match TrapFrame in traps.cc): x0..x30, sp, elr, spsr,
// esr, far.
//
// An IRQ from EL1 with SP_EL0 (vector 1) saves the caller-saved registers, ELR and SPSR on SP_EL1,
// calls aarch64_irq (arch/aarch64/testkernel/irq.cc) with IRQs still masked, restores and returns.

#define FRAME_SIZE (36 * 8)
#define IRQ_FRAME_SIZE (24 * 8)

.macro VENTRY kind
  .balign 0x80
  sub sp, sp, #FRAME_SIZE
  stp x0, x1, [sp, #0]
  mov x0, #\kind
  b trap_common
.endm

  .section .text.vectors, "ax"
  .balign 0x800
  .global aarch64_exception_vectors
aarch64_exception_vectors:
  VENTRY 0    // current EL, SP_EL0: synchronous
  .balign 0x80                  //                     IRQ
  sub sp, sp, #IRQ_FRAME_SIZE
  stp x0, x1, [sp, #0]
  b irq_common
  VENTRY 2    //                     FIQ
  VENTRY 3    //                     SError
  VENTRY 4    // current EL, SP_ELx: synchronous
  VENTRY 5    //                     IRQ
  VENTRY 6    //                     FIQ
  VENTRY 7    //                     SError
  VENTRY 8    // lower EL, AArch64:  synchronous
  VENTRY 9
  VENTRY 10
  VENTRY 11
  VENTRY 12   // lower EL, AArch32
  VENTRY 13
  VENTRY 14
  VENTRY 15

irq_common:
  stp x2, x3, [sp, #16]
  stp x4, x5, [sp, #32]
  stp x6, x7, [sp, #48]
  stp x8, x9, [sp, #64]
  stp x10, x11, [sp, #80]
  stp x12, x13, [sp, #96]
  stp x14, x15, [sp, #112]
  stp x16, x17, [sp, #128]
  stp x18, x29, [sp, #144]
  mrs x0, elr_el1
  mrs x1, spsr_el1
  stp x30, x0, [sp, #160]
  str x1, [sp, #176]
  bl aarch64_irq
  ldr x1, [sp, #176]
  ldp x30, x0, [sp, #160]
  msr elr_el1, x0
  msr spsr_el1, x1
  ldp x18, x29, [sp, #144]
  ldp x16, x17, [sp, #128]
  ldp x14, x15, [sp, #112]
  ldp x12, x13, [sp, #96]
  ldp x10, x11, [sp, #80]
  ldp x8, x9, [sp, #64]
  ldp x6, x7, [sp, #48]
  ldp x4, x5, [sp, #32]
  ldp x2, x3, [sp, #16]
  ldp x0, x1, [sp, #0]
  add sp, sp, #IRQ_FRAME_SIZE
  eret

trap_common:
  stp x2, x3, [sp, #16]
  stp x4, x5, [sp, #32]
  stp x6, x7, [sp, #48]
  stp x8, x9, [sp, #64]
  stp x10, x11, [sp, #80]
  stp x12, x13, [sp, #96]
  stp x14, x15, [sp, #112]
  stp x16, x17, [sp, #128]
  stp x18, x19, [sp, #144]
  stp x20, x21, [sp, #160]
  stp x22, x23, [sp, #176]
  stp x24, x25, [sp, #192]
  stp x26, x27, [sp, #208]
  stp x28, x29, [sp, #224]
  // The interrupted sp: SP_EL0 for the kernel's own code (vectors 0-3), else the SP_EL1 value
  // before this frame (a fault inside a handler).
  cmp x0, #4
  b.hs 4f
  mrs x1, sp_el0
  b 5f
4:
  add x1, sp, #FRAME_SIZE
5:
  stp x30, x1, [sp, #240]
  mrs x1, elr_el1
  mrs x2, spsr_el1
  stp x1, x2, [sp, #256]
  mrs x1, esr_el1
  mrs x2, far_el1
  stp x1, x2, [sp, #272]
  mov x1, sp
  bl aarch64_trap
3:
  wfe
  b 3b

// ---------------------------------------------------------------------------------------------
// Stacks, part of the kernel image and so of its reserved range. The guard page below the boot
// stack is left out of the identity map (arch/aarch64/testkernel/boot.cc).
  .section .bss.boot_stack, "aw", %nobits
  .balign 4096
  .global __boot_stack_guard
__boot_stack_guard:
  .space 4096
  .global __boot_stack_bottom
__boot_stack_bottom:
  .space 65536
  .global __boot_stack_top
__boot_stack_top:
  .balign 16
  .space 16384
  .global __exception_stack_top
__exception_stack_top:
