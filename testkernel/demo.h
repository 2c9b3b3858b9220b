// The demo run by `make run` (mode=demo): a visible tour of the DMA API on the booted machine.
#pragma once

#include "testkernel/kernel_env.h"

// Runs the demo, printing what happens; returns false if anything did not behave as expected.
bool run_demo(const KernelEnv& env);
