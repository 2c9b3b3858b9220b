#include "arch/x86_64/testkernel/cpu_features.h"

#include "arch/x86_64/testkernel/cpu.h"

namespace x86 {
namespace {

CpuFeatures g_features;

bool bit(uint32_t v, unsigned b) {
  return ((v >> b) & 1u) != 0;
}

void store_vendor_word(char* dst, uint32_t w) {
  for (int i = 0; i < 4; ++i) {
    dst[i] = static_cast<char>((w >> (8 * i)) & 0xFF);
  }
}

}  // namespace

void detect_cpu_features() {
  CpuFeatures f;
  CpuidRegs r = cpuid(0);
  f.max_leaf = r.eax;
  store_vendor_word(f.vendor + 0, r.ebx);
  store_vendor_word(f.vendor + 4, r.edx);
  store_vendor_word(f.vendor + 8, r.ecx);

  if (f.max_leaf >= 1) {
    r = cpuid(1);
    f.clflush = bit(r.edx, 19);
    f.pat = bit(r.edx, 16);
    uint32_t line = ((r.ebx >> 8) & 0xFF) * 8;
    if (f.clflush && line != 0) {
      f.clflush_line = line;
    }
  }
  if (f.max_leaf >= 7) {
    r = cpuid(7, 0);
    f.clflushopt = bit(r.ebx, 23);
    f.clwb = bit(r.ebx, 24);
  }
  // Leaf 0x15: TSC = crystal (ECX Hz) * EBX / EAX. Leaf 0x16: EAX = base frequency in MHz.
  if (f.max_leaf >= 0x15) {
    r = cpuid(0x15);
    if (r.eax != 0 && r.ebx != 0 && r.ecx != 0) {
      f.cpuid_tsc_hz = static_cast<uint64_t>(r.ecx) * r.ebx / r.eax;
    }
  }
  if (f.cpuid_tsc_hz == 0 && f.max_leaf >= 0x16) {
    r = cpuid(0x16);
    if ((r.eax & 0xFFFF) != 0) {
      f.cpuid_tsc_hz = static_cast<uint64_t>(r.eax & 0xFFFF) * 1'000'000;
    }
  }

  r = cpuid(0x8000'0000);
  f.max_ext_leaf = r.eax;
  if (f.max_ext_leaf >= 0x8000'0001) {
    r = cpuid(0x8000'0001);
    f.nx = bit(r.edx, 20);
    f.page_1g = bit(r.edx, 26);
  }
  if (f.max_ext_leaf >= 0x8000'0007) {
    r = cpuid(0x8000'0007);
    f.invariant_tsc = bit(r.edx, 8);
  }
  g_features = f;
}

const CpuFeatures& cpu_features() {
  return g_features;
}

}  // namespace x86
