// Installs the test kernel's dmakit hook table (testkernel/kernel_hooks.cc).
#pragma once

// Installs the hooks with max_cpus CPUs (num_cpus() after smp_prepare). Boot CPU, once, before the
// DMA set-up and before any other CPU is started.
void install_kernel_hooks(unsigned max_cpus);
