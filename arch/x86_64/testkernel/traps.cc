// GDT, TSS, IDT and the panic dump for unexpected traps. See traps.h.
#include "arch/x86_64/testkernel/traps.h"

#include "arch/x86_64/testkernel/cpu.h"
#include "arch/x86_64/testkernel/irq.h"
#include "arch/x86_64/testkernel/serial.h"
#include "arch/x86_64/testkernel/smp.h"
#include "testkernel/arch.h"
#include "testkernel/percpu.h"

extern "C" const uint64_t trap_stub_table[256];
extern "C" char boot_stack_guard[];
// Labels inside probe_read64 / probe_write64: the probed instruction and where to resume.
extern "C" char x86_probe_read_insn[], x86_probe_read_fixup[], x86_probe_write_insn[],
    x86_probe_write_fixup[];

namespace x86 {
namespace {

constexpr size_t kIstStackSize = 16384;
constexpr size_t kPageSize = 4096;

// IST stacks, each with a guard page below it (unmapped by paging.cc).
struct alignas(kPageSize) IstStackStorage {
  uint8_t guard[kPageSize];
  uint8_t stack[kIstStackSize];
};
IstStackStorage g_ist_stacks[kNumIstStacks];
// IST index (1-based) for the vectors that get their own stack.
constexpr uint8_t kIstDoubleFault = 1;
constexpr uint8_t kIstNmi = 2;
constexpr uint8_t kIstMachineCheck = 3;

struct [[gnu::packed]] Tss {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3;
  uint16_t iomap_base;
};
static_assert(sizeof(Tss) == 104, "64-bit TSS layout");

struct [[gnu::packed]] IdtEntry {
  uint16_t offset_low;
  uint16_t selector;
  uint8_t ist;
  uint8_t type_attr;
  uint16_t offset_mid;
  uint32_t offset_high;
  uint32_t zero;
};
static_assert(sizeof(IdtEntry) == 16, "64-bit IDT gate layout");

struct [[gnu::packed]] DescriptorPointer {
  uint16_t limit;
  uint64_t base;
};

alignas(16) Tss g_tss;
// null, kernel code (64-bit), kernel data, TSS (two slots).
alignas(16) uint64_t g_gdt[5];
alignas(16) IdtEntry g_idt[256];

// The probe in progress, if any.
struct ProbeState {
  bool active = false;
  ProbeFault fault;
};
volatile ProbeState g_probe;

// Set while a panic dump is printed: a fault inside the dump must not recurse.
volatile bool g_in_trap = false;

const char* vector_name(uint64_t v) {
  static const char* const kNames[32] = {
      "#DE divide error",
      "#DB debug",
      "NMI",
      "#BP breakpoint",
      "#OF overflow",
      "#BR bound range exceeded",
      "#UD invalid opcode",
      "#NM device not available",
      "#DF double fault",
      "coprocessor segment overrun",
      "#TS invalid TSS",
      "#NP segment not present",
      "#SS stack-segment fault",
      "#GP general protection",
      "#PF page fault",
      "reserved (15)",
      "#MF x87 floating-point error",
      "#AC alignment check",
      "#MC machine check",
      "#XM SIMD floating-point",
      "#VE virtualization exception",
      "#CP control protection",
      "reserved (22)",
      "reserved (23)",
      "reserved (24)",
      "reserved (25)",
      "reserved (26)",
      "reserved (27)",
      "#HV hypervisor injection",
      "#VC VMM communication",
      "#SX security exception",
      "reserved (31)",
  };
  return v < 32 ? kNames[v] : "unexpected interrupt";
}

bool in_guard_page(uint64_t addr) {
  const uint64_t boot_guard = reinterpret_cast<uint64_t>(boot_stack_guard);
  if (addr - boot_guard < kPageSize) return true;
  for (const IstStackStorage& s : g_ist_stacks) {
    if (addr - reinterpret_cast<uint64_t>(s.guard) < kPageSize) return true;
  }
  return false;
}

void print_reg(const char* name, uint64_t v) {
  serial_puts(name);
  serial_puts("=");
  serial_hex(v);
  serial_puts(" ");
}

void set_gate(unsigned vector, uint64_t handler, uint8_t ist) {
  IdtEntry& e = g_idt[vector];
  e.offset_low = static_cast<uint16_t>(handler & 0xFFFF);
  e.selector = kKernelCode;
  e.ist = ist;
  e.type_attr = 0x8E;  // Present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
  e.offset_mid = static_cast<uint16_t>((handler >> 16) & 0xFFFF);
  e.offset_high = static_cast<uint32_t>(handler >> 32);
  e.zero = 0;
}

}  // namespace

IstStack ist_stack(int i) {
  return IstStack{g_ist_stacks[i].guard, g_ist_stacks[i].stack + kIstStackSize};
}

namespace {

// Per-CPU TSS and GDT of the secondary CPUs (a TSS is marked busy by ltr, so each CPU needs its
// own, and a GDT to describe it). Their IST entries all point to one emergency stack per CPU.
struct alignas(kPageSize) SecondaryTables {
  IstStackStorage ist;
  Tss tss;
  alignas(16) uint64_t gdt[5];
};
SecondaryTables g_secondary_tables[kMaxCpus];

// Loads `gdt` (filled here, with `tss` in slots 3-4), reloads every segment register and the task
// register.
void load_gdt_and_tss(uint64_t* gdt, Tss* tss) {
  tss->iomap_base = sizeof(Tss);  // No I/O permission bitmap.
  const uint64_t base = reinterpret_cast<uint64_t>(tss);
  const uint64_t tss_limit = sizeof(Tss) - 1;
  gdt[0] = 0;
  gdt[1] = 0x00AF'9A00'0000'FFFF;  // Code: present, DPL 0, execute/read, L=1.
  gdt[2] = 0x00CF'9200'0000'FFFF;  // Data: present, DPL 0, read/write.
  // 64-bit available TSS (type 9), present: base split over both slots.
  gdt[3] = (tss_limit & 0xFFFF) | ((base & 0xFF'FFFF) << 16) | (0x89ull << 40) |
           ((tss_limit >> 16 & 0xF) << 48) | (((base >> 24) & 0xFF) << 56);
  gdt[4] = base >> 32;

  DescriptorPointer gdtr{5 * sizeof(uint64_t) - 1, reinterpret_cast<uint64_t>(gdt)};
  __asm__ volatile(
      "lgdt %0\n"
      // Reload CS through a far return, then the data segments.
      "pushq %1\n"
      "leaq 1f(%%rip), %%rax\n"
      "pushq %%rax\n"
      "lretq\n"
      "1:\n"
      "movl %2, %%eax\n"
      "movl %%eax, %%ds\n"
      "movl %%eax, %%es\n"
      "movl %%eax, %%ss\n"
      "xorl %%eax, %%eax\n"
      "movl %%eax, %%fs\n"
      "movl %%eax, %%gs\n"
      "ltr %w3\n" ::"m"(gdtr),
      "i"(static_cast<uint64_t>(kKernelCode)), "i"(static_cast<uint32_t>(kKernelData)), "r"(kTss)
      : "rax", "memory");
}

void load_idt() {
  DescriptorPointer idtr{sizeof(g_idt) - 1, reinterpret_cast<uint64_t>(g_idt)};
  __asm__ volatile("lidt %0" ::"m"(idtr) : "memory");
}

}  // namespace

void init_traps() {
  for (int i = 0; i < kNumIstStacks; ++i) {
    g_tss.ist[i] = reinterpret_cast<uint64_t>(g_ist_stacks[i].stack + kIstStackSize);
  }
  load_gdt_and_tss(g_gdt, &g_tss);

  for (unsigned v = 0; v < 256; ++v) {
    uint8_t ist = 0;
    if (v == 8) ist = kIstDoubleFault;
    if (v == 2) ist = kIstNmi;
    if (v == 18) ist = kIstMachineCheck;
    set_gate(v, trap_stub_table[v], ist);
  }
  load_idt();
}

void init_traps_secondary(unsigned cpu_index) {
  if (cpu_index == 0 || cpu_index >= kMaxCpus) boot_panic("init_traps_secondary: bad CPU index");
  SecondaryTables& t = g_secondary_tables[cpu_index];
  for (int i = 0; i < kNumIstStacks; ++i) {
    t.tss.ist[i] = reinterpret_cast<uint64_t>(t.ist.stack + kIstStackSize);
  }
  load_gdt_and_tss(t.gdt, &t.tss);
  load_idt();
}

// noinline: the asm defines global labels, which must exist exactly once.
[[gnu::noinline]] bool probe_read64(uintptr_t addr, uint64_t* value, ProbeFault* fault) {
  g_probe.active = true;
  uint64_t v = 0;
  uint32_t ok;
  __asm__ volatile(
      "movl $1, %[ok]\n"
      ".global x86_probe_read_insn\n"
      "x86_probe_read_insn: movq (%[addr]), %[v]\n"
      "jmp 1f\n"
      ".global x86_probe_read_fixup\n"
      "x86_probe_read_fixup: xorl %[ok], %[ok]\n"
      "1:\n"
      : [v] "+r"(v), [ok] "=&r"(ok)
      : [addr] "r"(addr)
      : "memory");
  g_probe.active = false;
  if (ok == 0) {
    fault->vector = g_probe.fault.vector;
    fault->error = g_probe.fault.error;
    fault->cr2 = g_probe.fault.cr2;
    return false;
  }
  *value = v;
  return true;
}

[[gnu::noinline]] bool probe_write64(uintptr_t addr, uint64_t value, ProbeFault* fault) {
  g_probe.active = true;
  uint32_t ok;
  __asm__ volatile(
      "movl $1, %[ok]\n"
      ".global x86_probe_write_insn\n"
      "x86_probe_write_insn: movq %[v], (%[addr])\n"
      "jmp 1f\n"
      ".global x86_probe_write_fixup\n"
      "x86_probe_write_fixup: xorl %[ok], %[ok]\n"
      "1:\n"
      : [ok] "=&r"(ok)
      : [addr] "r"(addr), [v] "r"(value)
      : "memory");
  g_probe.active = false;
  if (ok == 0) {
    fault->vector = g_probe.fault.vector;
    fault->error = g_probe.fault.error;
    fault->cr2 = g_probe.fault.cr2;
    return false;
  }
  return true;
}

}  // namespace x86

using namespace x86;

namespace {

// A trap at a probe's access: record it and resume at the probe's fixup. False if `f` is not one.
bool handle_probe(TrapFrame* f, uint64_t cr2) {
  if (!g_probe.active || f->vector >= 32) return false;
  uint64_t fixup = 0;
  if (f->rip == reinterpret_cast<uint64_t>(x86_probe_read_insn)) {
    fixup = reinterpret_cast<uint64_t>(x86_probe_read_fixup);
  } else if (f->rip == reinterpret_cast<uint64_t>(x86_probe_write_insn)) {
    fixup = reinterpret_cast<uint64_t>(x86_probe_write_fixup);
  } else {
    return false;
  }
  g_probe.fault.vector = f->vector;
  g_probe.fault.error = f->error;
  g_probe.fault.cr2 = cr2;
  g_probe.active = false;
  f->rip = fixup;
  return true;
}

}  // namespace

extern "C" void x86_trap_handler(TrapFrame* f) {
  if (f->vector >= 32 && smp_handle_interrupt(static_cast<uint8_t>(f->vector))) return;
  if (g_in_trap) {
    serial_puts("\nPANIC: x86_64: trap ");
    serial_dec(f->vector);
    serial_puts(" while reporting a trap, rip=");
    serial_hex(f->rip);
    serial_puts("\n");
    arch::exit_qemu(false);
  }
  // External interrupts (MSIs, the LAPIC timer, IPIs) are dispatched; only exceptions are fatal.
  if (f->vector >= 32) {
    irq_dispatch(f->vector);
    return;
  }
  const uint64_t cr2 = read_cr2();
  if (handle_probe(f, cr2)) return;
  g_in_trap = true;

  serial_puts("\nPANIC: x86_64 exception ");
  serial_dec(f->vector);
  serial_puts(" (");
  serial_puts(vector_name(f->vector));
  serial_puts(") error=");
  serial_hex(f->error, 4);
  if (f->vector == 14) {
    // Page-fault error code: P, W/R, U/S, RSVD, I/D.
    serial_puts((f->error & 1) ? " [protection" : " [not-present");
    serial_puts((f->error & 2) ? ", write" : ", read");
    if (f->error & 16) serial_puts(", instruction fetch");
    if (f->error & 8) serial_puts(", reserved bit");
    serial_puts((f->error & 4) ? ", user]" : ", kernel]");
  }
  serial_puts("\n  rip=");
  serial_hex(f->rip);
  if (f->vector == 14) {
    serial_puts(" faulting address cr2=");
    serial_hex(cr2);
  }
  if (f->vector == 8 && in_guard_page(cr2)) {
    // A #PF on a stack guard page could not push its frame: the stack overflowed.
    serial_puts(" kernel stack overflow (cr2 ");
    serial_hex(cr2);
    serial_puts(" is a stack guard page)");
  }
  serial_puts("\n  ");
  print_reg("cs", f->cs);
  print_reg("rflags", f->rflags);
  print_reg("rsp", f->rsp);
  print_reg("ss", f->ss);
  serial_puts("\n  ");
  print_reg("rax", f->rax);
  print_reg("rbx", f->rbx);
  print_reg("rcx", f->rcx);
  print_reg("rdx", f->rdx);
  serial_puts("\n  ");
  print_reg("rsi", f->rsi);
  print_reg("rdi", f->rdi);
  print_reg("rbp", f->rbp);
  print_reg("r8 ", f->r8);
  serial_puts("\n  ");
  print_reg("r9 ", f->r9);
  print_reg("r10", f->r10);
  print_reg("r11", f->r11);
  print_reg("r12", f->r12);
  serial_puts("\n  ");
  print_reg("r13", f->r13);
  print_reg("r14", f->r14);
  print_reg("r15", f->r15);
  serial_puts("\n  ");
  print_reg("cr0", read_cr0());
  print_reg("cr2", cr2);
  print_reg("cr3", read_cr3());
  print_reg("cr4", read_cr4());
  serial_puts("\n");
  arch::exit_qemu(false);
}
