// Start-up code of the x86-64 application processors (arch/x86_64/testkernel/smp.cc).
//
// x86_ap_trampoline_*: real-mode code that smp.cc copies to physical AP_TRAMPOLINE_PHYS (a page
// of the reserved low megabyte) and starts each AP at with INIT-SIPI-SIPI (SIPI vector
// AP_TRAMPOLINE_PHYS >> 12, so CS = AP_TRAMPOLINE_PHYS >> 4 and IP = 0). It is assembled for
// that address: real mode -> 32-bit protected mode (its own GDT) -> long mode through the boot
// page tables of boot.S (they identity-map the low gigabyte, where this page lies, and map the
// kernel at its link address), then jumps to x86_ap_entry64 in the kernel image. smp.cc patches
// two words of the copy: the boot tables' physical address and the EFER bits to set (LME, and
// NXE when the boot CPU has it: the final page tables use NX bits).
//
// x86_ap_entry64: at the link address, still on the boot tables; switches to the final tables,
// takes the AP's stack from its PerCpu and calls x86_ap_main(PerCpu*). x86_ap_boot_cr3 and
// x86_ap_boot_percpu (smp.cc) say which tables and which PerCpu; one AP starts at a time.

#define AP_TRAMPOLINE_PHYS 0x8000
#define TRAMP(sym) (AP_TRAMPOLINE_PHYS + ((sym) - x86_ap_trampoline_start))

#define CR0_PE (1 << 0)
#define CR0_WP (1 << 16)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)
#define MSR_EFER 0xc0000080
#define PERCPU_STACK 16  // testkernel/percpu.h, checked in testkernel/smp.cc

  .section .rodata
  .p2align 12
  .global x86_ap_trampoline_start
x86_ap_trampoline_start:
  .code16
  cli
  cld
  mov %cs, %ax
  mov %ax, %ds
  lgdtl (tramp_gdtr - x86_ap_trampoline_start)
  mov %cr0, %eax
  or $CR0_PE, %eax
  mov %eax, %cr0
  ljmpl $0x08, $TRAMP(tramp_pm32)

  .code32
tramp_pm32:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  mov %cr4, %eax
  or $CR4_PAE, %eax
  mov %eax, %cr4
  mov TRAMP(x86_ap_trampoline_cr3), %eax
  mov %eax, %cr3
  mov $MSR_EFER, %ecx
  rdmsr
  or TRAMP(x86_ap_trampoline_efer), %eax
  wrmsr
  mov %cr0, %eax
  or $(CR0_PG | CR0_WP), %eax
  mov %eax, %cr0
  ljmp $0x18, $TRAMP(tramp_lm64)

  .code64
tramp_lm64:
  movabs $x86_ap_entry64, %rax
  jmp *%rax

  .p2align 3
tramp_gdt:
  .quad 0                       // null
  .quad 0x00cf9a000000ffff      // 0x08: 32-bit code
  .quad 0x00cf92000000ffff      // 0x10: data
  .quad 0x00af9a000000ffff      // 0x18: 64-bit code
tramp_gdt_end:
tramp_gdtr:
  .word tramp_gdt_end - tramp_gdt - 1
  .long TRAMP(tramp_gdt)
  .p2align 2
  .global x86_ap_trampoline_cr3
x86_ap_trampoline_cr3:
  .long 0
  .global x86_ap_trampoline_efer
x86_ap_trampoline_efer:
  .long 0
  .global x86_ap_trampoline_end
x86_ap_trampoline_end:

  .text
  .code64
  .global x86_ap_entry64
x86_ap_entry64:
  mov $0x10, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  mov x86_ap_boot_cr3(%rip), %rax
  mov %rax, %cr3
  mov x86_ap_boot_percpu(%rip), %rdi
  mov PERCPU_STACK(%rdi), %rsp
  xor %ebp, %ebp
  call x86_ap_main
  ud2
