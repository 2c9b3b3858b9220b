// The test kernel's dmakit hook table (dmakit/kernel_hooks.h): interrupt masking, the CPU index,
// the cross-CPU operations and whether the caller is an interrupt handler, each from the
// architecture port (testkernel/arch.h) or the per-CPU code (testkernel/percpu.h). A worked example
// of what a kernel provides.
#include "testkernel/kernel_hooks.h"

#include "dmakit/kernel_hooks.h"
#include "testkernel/arch.h"
#include "testkernel/percpu.h"

namespace {

uintptr_t hook_irq_save() {
  return arch::irq_save();
}
void hook_irq_restore(uintptr_t state) {
  arch::irq_restore(state);
}
unsigned hook_cpu_id() {
  return cpu_index();
}
void hook_tlb_flush(uintptr_t va, size_t size) {
  arch::tlb_flush_kernel_range(va, size);
}
void hook_on_each_cpu(void (*fn)(void*), void* arg) {
  run_on_all_cpus(fn, arg);
}
int hook_in_interrupt() {
  return in_interrupt() ? 1 : 0;
}
// Masked interrupts matter only when another CPU is online: with one CPU (boot, before the
// secondaries start) a TLB shootdown waits for nobody.
int hook_irqs_disabled() {
  return !arch::irq_enabled_local() && num_online_cpus() > 1 ? 1 : 0;
}

}  // namespace

void install_kernel_hooks(unsigned max_cpus) {
  dmakit_kernel_hooks h = {};
  h.irq_save = &hook_irq_save;
  h.irq_restore = &hook_irq_restore;
  h.cpu_id = &hook_cpu_id;
  h.max_cpus = max_cpus;
  h.tlb_flush_kernel_range = &hook_tlb_flush;
  h.on_each_cpu = &hook_on_each_cpu;
  h.in_interrupt = &hook_in_interrupt;
  h.irqs_disabled = &hook_irqs_disabled;
  dmakit_set_kernel_hooks(&h);
}
