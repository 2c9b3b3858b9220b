// PVH entry: QEMU (q35, -kernel) reads the XEN_ELFNOTE_PHYS32_ENTRY note below and enters
// _pvh_start on the boot CPU in 32-bit protected mode, paging off, flat 4 GiB segments,
// interrupts off, with the physical address of struct hvm_start_info in %ebx (Xen's
// docs/misc/pvh.pandoc, "x86/HVM direct boot ABI"). Secondary CPUs never come here: they wait for
// INIT/SIPI, which this kernel does not send.
//
// This file does the least that C++ cannot: zero .bss, build boot page tables, enter long mode,
// jump to the kernel's link address and call x86_64_main(start_info_phys).
//
// Boot page tables (all in .bss, so inside the kernel image): one page directory of 512 2 MiB
// pages maps physical [0, 1 GiB) twice, at virtual 0 (identity: the code running right after
// paging is switched on, and the PVH start info, which QEMU's option ROM puts below 1 MiB) and at
// 0xFFFFFFFF80000000 (the kernel's link address). paging.cc replaces them with the final tables.

#define KERNEL_VMA 0xFFFFFFFF80000000
#define PA(x) ((x) - KERNEL_VMA)

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4

#define CR0_WP (1 << 16)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)
#define EFER_NXE (1 << 11)
#define PTE_P 0x1
#define PTE_RW 0x2
#define PTE_PS 0x80

#define BOOT_STACK_SIZE 65536

// The PVH note: name "Xen", type 18, a 32-bit physical entry address.
  .section .note.Xen, "a"
  .p2align 2
  .long 4                   // namesz, including the NUL
  .long 4                   // descsz
  .long XEN_ELFNOTE_PHYS32_ENTRY
  .asciz "Xen"
  .long PA(_pvh_start)

  .section .boot.text, "ax"
  .code32
  .global _pvh_start
_pvh_start:
  cli
  cld
  // The start info's address moves to %ebp (CPUID below clobbers %ebx) until x86_64_main gets it.
  mov %ebx, %ebp
  lgdt PA(boot_gdt_ptr)
  mov $0x10, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  mov %eax, %fs
  mov %eax, %gs
  mov $PA(boot_stack_top), %esp

  // Long mode needs CPUID leaf 0x80000001 with EDX.LM (bit 29).
  mov $0x80000000, %eax
  cpuid
  cmp $0x80000001, %eax
  jb no_long_mode
  mov $0x80000001, %eax
  cpuid
  bt $29, %edx
  jnc no_long_mode
  mov %edx, %esi            // EDX.NX (bit 20) decides EFER.NXE below.

  // Zero .bss (page tables and stacks live there; nothing may rely on the loader doing it).
  mov $PA(__bss_start), %edi
  mov $PA(__bss_end), %ecx
  sub %edi, %ecx
  xor %eax, %eax
  rep stosb

  // boot_pd[i] = i * 2 MiB, present, writable, large.
  mov $PA(boot_pd), %edi
  mov $(PTE_P | PTE_RW | PTE_PS), %eax
  mov $512, %ecx
1:
  mov %eax, (%edi)
  add $0x200000, %eax
  add $8, %edi
  loop 1b
  movl $(PA(boot_pd) + PTE_P + PTE_RW), PA(boot_pdpt_low)
  movl $(PA(boot_pd) + PTE_P + PTE_RW), PA(boot_pdpt_high) + 510 * 8
  movl $(PA(boot_pdpt_low) + PTE_P + PTE_RW), PA(boot_pml4)
  movl $(PA(boot_pdpt_high) + PTE_P + PTE_RW), PA(boot_pml4) + 511 * 8

  mov %cr4, %eax
  or $CR4_PAE, %eax
  mov %eax, %cr4
  mov $PA(boot_pml4), %eax
  mov %eax, %cr3

  mov $MSR_EFER, %ecx
  rdmsr
  or $EFER_LME, %eax
  bt $20, %esi
  jnc 2f
  or $EFER_NXE, %eax
2:
  wrmsr

  mov %cr0, %eax
  or $(CR0_PG | CR0_WP), %eax
  mov %eax, %cr0
  ljmp $0x08, $PA(long_mode_low)

no_long_mode:
  mov $PA(no_long_mode_msg), %esi
3:
  lodsb
  test %al, %al
  jz 4f
  mov $COM1, %dx
  out %al, %dx
  jmp 3b
4:
  mov $1, %eax              // isa-debug-exit: failure.
  mov $DEBUG_EXIT_PORT, %dx
  out %eax, %dx
5:
  hlt
  jmp 5b

  .code64
long_mode_low:
  // Still at the physical (identity-mapped) address; continue at the link address.
  movabs $long_mode_high, %rax
  jmp *%rax

  .text
long_mode_high:
  mov $0x10, %eax
  mov %eax, %ds
  mov %eax, %es
  mov %eax, %ss
  xor %eax, %eax
  mov %eax, %fs
  mov %eax, %gs
  lea boot_stack_top(%rip), %rsp
  mov %ebp, %edi            // Zero-extends: the start info's physical address.
  xor %ebp, %ebp            // Terminates frame-pointer walks.
  call x86_64_main
  ud2

  .section .rodata
no_long_mode_msg:
  .asciz "PANIC: x86_64 boot: this CPU has no long mode\r\n"

  .p2align 3
boot_gdt:
  .quad 0                   // null
  .quad 0x00af9a000000ffff  // 0x08: 64-bit code, ring 0
  .quad 0x00cf92000000ffff  // 0x10: data, ring 0
boot_gdt_end:
boot_gdt_ptr:
  .word boot_gdt_end - boot_gdt - 1
  .long PA(boot_gdt)

  .section .bss.boot, "aw", @nobits
  .p2align 12
  .global boot_pml4
boot_pml4:
  .skip 4096
boot_pdpt_low:
  .skip 4096
boot_pdpt_high:
  .skip 4096
boot_pd:
  .skip 4096
  // The page below the stack stays unmapped in the final page tables, so an overflow faults
  // (and the double-fault handler, on its own IST stack, reports it).
  .global boot_stack_guard
boot_stack_guard:
  .skip 4096
  .global boot_stack_bottom
boot_stack_bottom:
  .skip BOOT_STACK_SIZE
  .global boot_stack_top
boot_stack_top:
