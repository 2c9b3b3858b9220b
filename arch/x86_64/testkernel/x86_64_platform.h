// What the x86-64 boot code learned, for the rest of arch/x86_64 (arch_io.cc).
#pragma once

#include "arch/x86_64/testkernel/pvh.h"

namespace x86 {

// The PVH start info as read at boot (copied; valid for the life of the kernel).
const PvhInfo& pvh_info();

}  // namespace x86
