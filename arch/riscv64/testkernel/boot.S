// RISC-V 64 entry and trap vector.
//
// OpenSBI (fw_dynamic) enters _start in S-mode on the boot hart only, with satp = 0, a0 = hart
// id, a1 = physical address of the flattened device tree. QEMU loads the ELF by its physical
// (load) addresses and jumps to the lowest one, so _start must be the first byte of the image.
//
// The kernel is linked in the direct map (virtual = physical + KERNEL_VIRT_OFFSET, see
// linker/riscv64.ld) but starts running at its physical address. The code here only uses
// PC-relative addressing until the MMU is on, and does:
//   1. zero .bss; enable the FPU (sstatus.FS = Initial) so compiler-chosen FP code cannot trap;
//   2. build the boot page table: identity gigapage over the kernel (so the instruction after the
//      satp write is still mapped) and direct-map gigapages over the kernel, the device tree and
//      the low gigabyte of devices (console UART);
//   3. turn on Sv39 and jump to the kernel's linked (upper-half) address, set the stack, the
//      per-CPU pointer (tp = entry 0 of the per-CPU table, with this hart's trap stack in it) and
//      the trap vector, and call riscv64_boot(hartid, dtb_phys), which builds the real page table.
//
// riscv64_secondary_entry: where SBI HSM hart_start starts the other harts (arch/riscv64/
// testkernel/smp.cc), at its physical address with satp = 0, a0 = hart id, a1 = its PerCpu.
#define PTE_KERNEL_RWX_GAD 0xEF  // V | R | W | X | G | A | D
#define SATP_MODE_SV39 8
#define TRAP_FRAME_SIZE 288
// PerCpu field offsets (testkernel/percpu.h, checked by static_asserts in testkernel/smp.cc).
#define PERCPU_TRAP_STACK 8
#define PERCPU_STACK 16

  .section .text.boot, "ax", %progbits
  .globl _start
_start:
  csrw sie, zero
  csrci sstatus, 2              // SIE off: the kernel runs with interrupts masked.
  mv s0, a0                     // hart id
  mv s1, a1                     // device tree (physical)

  lla t0, __bss_start
  lla t1, __bss_end
1:
  bgeu t0, t1, 2f
  sd zero, 0(t0)
  addi t0, t0, 8
  j 1b
2:
  li t0, (1 << 13)              // sstatus.FS = Initial
  csrs sstatus, t0

  lla t0, boot_root_table
  // Identity gigapage and direct-map gigapage over the kernel image.
  lla t1, _start
  srli t1, t1, 30               // gigapage number of the kernel
  slli t2, t1, 28               // PPN (t1 << 18) placed at bit 10
  ori t2, t2, PTE_KERNEL_RWX_GAD
  andi t3, t1, 0x1FF
  slli t3, t3, 3
  add t3, t0, t3
  sd t2, 0(t3)
  addi t3, t1, 256              // upper half: VPN[2] = 256 + gigapage number
  andi t3, t3, 0x1FF
  slli t3, t3, 3
  add t3, t0, t3
  sd t2, 0(t3)
  // Direct-map gigapage over the device tree.
  srli t1, s1, 30
  slli t2, t1, 28
  ori t2, t2, PTE_KERNEL_RWX_GAD
  addi t3, t1, 256
  andi t3, t3, 0x1FF
  slli t3, t3, 3
  add t3, t0, t3
  sd t2, 0(t3)
  // Direct-map gigapage over physical 0..1 GiB (the UART). No PBMT bits yet: whether Svpbmt
  // exists is only known from the device tree; the PMAs make it I/O on QEMU virt anyway.
  li t2, PTE_KERNEL_RWX_GAD
  li t3, 256 * 8
  add t3, t0, t3
  sd t2, 0(t3)

  srli t1, t0, 12
  li t2, SATP_MODE_SV39
  slli t2, t2, 60
  or t1, t1, t2
  sfence.vma
  csrw satp, t1
  sfence.vma

  lla t0, .Lhigh_entry_addr
  ld t0, 0(t0)
  jr t0

  .balign 8
.Lhigh_entry_addr:
  .dword .Lhigh_entry

.Lhigh_entry:
  lla sp, boot_stack_top
  lla tp, testkernel_percpu
  lla t0, trap_stack_top
  sd t0, PERCPU_TRAP_STACK(tp)
  lla t0, riscv64_trap_entry
  csrw stvec, t0
  mv a0, s0
  mv a1, s1
  call riscv64_boot
3:
  wfi
  j 3b

  .globl riscv64_secondary_entry
riscv64_secondary_entry:
  csrw sie, zero
  csrci sstatus, 2
  mv s1, a1                     // PerCpu (virtual address)
  // The boot page table identity-maps the kernel's gigabyte: the fetch after the satp write
  // still finds this code.
  lla t0, boot_root_table
  srli t0, t0, 12
  li t1, SATP_MODE_SV39
  slli t1, t1, 60
  or t0, t0, t1
  sfence.vma
  csrw satp, t0
  sfence.vma
  lla t0, .Lsecondary_high_addr
  ld t0, 0(t0)
  jr t0

  .balign 8
.Lsecondary_high_addr:
  .dword .Lsecondary_high

.Lsecondary_high:
  lla t0, riscv64_kernel_satp
  ld t0, 0(t0)
  sfence.vma
  csrw satp, t0
  sfence.vma
  mv tp, s1
  ld sp, PERCPU_STACK(tp)
  li t0, (1 << 13)              // sstatus.FS = Initial
  csrs sstatus, t0
  lla t0, riscv64_trap_entry
  csrw stvec, t0
  mv a0, tp
  call riscv64_secondary_boot
4:
  wfi
  j 4b

// The trap vector (stvec direct mode). Every trap lands on the dedicated trap stack (so a fault
// caused by a bad or overflowed kernel stack is still reported), with the interrupted sp parked in
// sscratch. riscv64_trap(frame) either never returns (fatal) or returns after adjusting
// frame->sepc (an expected trap, e.g. a feature probe); then everything is restored and sret
// resumes the interrupted code.
  .text
  .balign 4
  .globl riscv64_trap_entry
riscv64_trap_entry:
  csrw sscratch, sp
  ld sp, PERCPU_TRAP_STACK(tp)   // This hart's trap stack.
  addi sp, sp, -TRAP_FRAME_SIZE
  sd x1, 8(sp)
  sd x3, 24(sp)
  sd x4, 32(sp)
  sd x5, 40(sp)
  sd x6, 48(sp)
  sd x7, 56(sp)
  sd x8, 64(sp)
  sd x9, 72(sp)
  sd x10, 80(sp)
  sd x11, 88(sp)
  sd x12, 96(sp)
  sd x13, 104(sp)
  sd x14, 112(sp)
  sd x15, 120(sp)
  sd x16, 128(sp)
  sd x17, 136(sp)
  sd x18, 144(sp)
  sd x19, 152(sp)
  sd x20, 160(sp)
  sd x21, 168(sp)
  sd x22, 176(sp)
  sd x23, 184(sp)
  sd x24, 192(sp)
  sd x25, 200(sp)
  sd x26, 208(sp)
  sd x27, 216(sp)
  sd x28, 224(sp)
  sd x29, 232(sp)
  sd x30, 240(sp)
  sd x31, 248(sp)
  sd zero, 0(sp)
  csrr t0, sscratch
  sd t0, 16(sp)
  csrr t0, sepc
  sd t0, 256(sp)
  csrr t0, sstatus
  sd t0, 264(sp)
  csrr t0, scause
  sd t0, 272(sp)
  csrr t0, stval
  sd t0, 280(sp)
  mv a0, sp
  call riscv64_trap

  ld t0, 256(sp)
  csrw sepc, t0
  ld t0, 264(sp)
  csrw sstatus, t0
  ld x1, 8(sp)
  ld x3, 24(sp)
  ld x4, 32(sp)
  ld x5, 40(sp)
  ld x6, 48(sp)
  ld x7, 56(sp)
  ld x8, 64(sp)
  ld x9, 72(sp)
  ld x10, 80(sp)
  ld x11, 88(sp)
  ld x12, 96(sp)
  ld x13, 104(sp)
  ld x14, 112(sp)
  ld x15, 120(sp)
  ld x16, 128(sp)
  ld x17, 136(sp)
  ld x18, 144(sp)
  ld x19, 152(sp)
  ld x20, 160(sp)
  ld x21, 168(sp)
  ld x22, 176(sp)
  ld x23, 184(sp)
  ld x24, 192(sp)
  ld x25, 200(sp)
  ld x26, 208(sp)
  ld x27, 216(sp)
  ld x28, 224(sp)
  ld x29, 232(sp)
  ld x30, 240(sp)
  ld x31, 248(sp)
  ld sp, 16(sp)
  sret

  .section .bss.boot_page_table, "aw", %nobits
  .balign 4096
  .globl boot_root_table
boot_root_table:
  .space 4096

// The boot stack sits on top of a guard page that the kernel page table leaves unmapped, so an
// overflow faults (and is reported from the separate trap stack) instead of corrupting .bss.
  .section .bss.stacks, "aw", %nobits
  .balign 4096
  .globl boot_stack_guard
boot_stack_guard:
  .space 4096
  .globl boot_stack_bottom
boot_stack_bottom:
  .space 64 * 1024
  .globl boot_stack_top
boot_stack_top:
  .globl trap_stack_bottom
trap_stack_bottom:
  .space 16 * 1024
  .globl trap_stack_top
trap_stack_top:
