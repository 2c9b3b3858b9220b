// In-VM test of a CPU that fails to come up (issue "Interrupts and SMP", faults): booted with
// `smp_fail=<n>` on the command line, secondary CPU n gives up on purpose on its way online
// (secondary_give_up, the path a CPU whose interrupt controller cannot be set up takes); the
// boot reports it and goes on with the others, which all run work and DMA. Booted without it,
// the same test checks that no CPU gave up.
//
//   make test-qemu ARCH=<arch> QEMU_SMP=4 QEMU_APPEND="smp_fail=2 ktest=smp_fail"
//
// (ktest= keeps the other smp_ tests out of that run: they require every described CPU online.)
#include "dmakit/kernel_hooks.h"
#include "testkernel/arch.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "testkernel/percpu.h"
#include "tests/qemu/ktest.h"
#include "tests/qemu/test_util.h"

namespace {

// The index smp_fail= names, or 0 (none).
unsigned told_to_fail() {
  char v[16] = "";
  const char* cmdline = kernel_env().boot->cmdline;
  if (cmdline == nullptr || !kstr::cmdline_value(cmdline, "smp_fail", v, sizeof(v))) return 0;
  unsigned n = 0;
  for (const char* p = v; *p != '\0'; ++p) {
    if (*p < '0' || *p > '9' || n > kMaxCpus) return 0;
    n = n * 10 + static_cast<unsigned>(*p - '0');
  }
  return n;
}

unsigned g_ran_on[kMaxCpus];
unsigned g_dma_ok[kMaxCpus];

// Maps, syncs and unmaps a buffer of this CPU's own from wherever it runs.
void work_and_dma(void*) {
  const unsigned me = cpu_index();
  __atomic_fetch_add(&g_ran_on[me], 1u, __ATOMIC_RELAXED);
  ktest_util::Pages page(0);
  if (!page.ok()) return;
  KernelDmaOp* op = kernel_env().dma;
  DmaConstraints c = op->default_constraints();
  ktest_util::fill_pattern(page.va(), 512, me + 1);
  auto m = op->map_single(c, page.va(), 512, 0, DmaDirection::kToDevice);
  if (!m.ok()) return;
  const bool same =
      ktest_util::check_pattern(ktest_util::device_view(m->dma_addr), 512, me + 1) == 512;
  op->unmap_single(*m);
  if (same) __atomic_fetch_add(&g_dma_ok[me], 1u, __ATOMIC_RELAXED);
}

}  // namespace

KTEST(smp_fail_a_cpu_that_fails_to_come_up_is_left_out_and_the_others_run) {
  const unsigned described =
      kernel_env().boot->num_cpus < kMaxCpus ? kernel_env().boot->num_cpus : kMaxCpus;
  const unsigned fail = told_to_fail();
  const bool failing = fail != 0 && fail < described;
  kprintf("  smp_fail=%u, %u CPUs described, %u online\n", fail, described, num_online_cpus());
  KEXPECT_EQ(num_cpus(), described);
  KEXPECT_EQ(num_online_cpus(), failing ? described - 1 : described);
  for (unsigned i = 0; i < described; ++i) {
    const bool expect_up = !(failing && i == fail);
    KEXPECT_EQ(cpu_online(i), expect_up);
    KEXPECT_EQ(__atomic_load_n(&cpu_data(i).gave_up, __ATOMIC_ACQUIRE), !expect_up);
  }
  // Work for the failed CPU is refused, not left waiting for ever.
  if (failing) KEXPECT_ERR(run_on_cpu(fail, &work_and_dma, nullptr), ErrorCode::kInvalidArgument);

  // Every CPU that came up runs work and DMA; the failed one is never asked.
  for (unsigned& n : g_ran_on) n = 0;
  for (unsigned& n : g_dma_ok) n = 0;
  run_on_all_cpus(&work_and_dma, nullptr);
  for (unsigned i = 0; i < kMaxCpus; ++i) {
    const unsigned want = i < described && cpu_online(i) ? 1u : 0u;
    KEXPECT_EQ(__atomic_load_n(&g_ran_on[i], __ATOMIC_RELAXED), want);
    KEXPECT_EQ(__atomic_load_n(&g_dma_ok[i], __ATOMIC_RELAXED), want);
  }
  // The library's hook reaches the same CPUs.
  for (unsigned& n : g_ran_on) n = 0;
  dma::kernel_hooks().on_each_cpu(&work_and_dma, nullptr);
  unsigned ran = 0;
  for (unsigned n : g_ran_on) ran += n;
  KEXPECT_EQ(ran, num_online_cpus());
}
