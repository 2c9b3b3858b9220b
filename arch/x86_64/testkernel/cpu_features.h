// CPU features the x86-64 port depends on or reports, read once from CPUID on the boot CPU.
#pragma once

#include "dmakit/support/types.h"

namespace x86 {

struct CpuFeatures {
  bool clflush = false;        // CPUID.1:EDX[19]
  bool clflushopt = false;     // CPUID.(7,0):EBX[23]
  bool clwb = false;           // CPUID.(7,0):EBX[24]
  bool pat = false;            // CPUID.1:EDX[16]
  bool nx = false;             // CPUID.80000001h:EDX[20]
  bool page_1g = false;        // CPUID.80000001h:EDX[26]
  bool invariant_tsc = false;  // CPUID.80000007h:EDX[8]
  // Bytes flushed by one CLFLUSH/CLFLUSHOPT/CLWB: CPUID.1:EBX[15:8] * 8 (64 when not reported).
  uint32_t clflush_line = 64;
  // TSC frequency from CPUID leaf 0x15 (crystal * ratio) or 0x16 (base MHz), 0 if neither says.
  uint64_t cpuid_tsc_hz = 0;
  uint32_t max_leaf = 0;
  uint32_t max_ext_leaf = 0;
  char vendor[13] = {};
};

// Reads CPUID. Call once on the boot CPU, before anything below reads the result.
void detect_cpu_features();

// The features found by detect_cpu_features().
const CpuFeatures& cpu_features();

}  // namespace x86
