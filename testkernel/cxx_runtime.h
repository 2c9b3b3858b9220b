// C++ runtime support for the freestanding test kernel (see cxx_runtime.cc).
#pragma once

// Calls every constructor in .init_array, in link order. Call once, first thing in kernel_main.
void run_global_constructors();
