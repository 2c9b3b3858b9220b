// The device part of the demo run by `make run`: an edu DMA copy through a bounce buffer and a
// virtio-blk write and read, each with its statistics (testkernel/demo_devices.cc).
#pragma once

#include "testkernel/kernel_env.h"

// Prints what happens; returns false if a device is missing or did not behave as expected.
bool run_device_demo(const KernelEnv& env);
