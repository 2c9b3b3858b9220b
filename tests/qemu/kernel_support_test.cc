// In-VM tests of the test kernel's own support code: kprintf formatting, the freestanding mem*
// functions, the command-line helpers and the boot-time memory planner.
#include "dmakit/support/mem.h"
#include "dmakit/support/utility.h"
#include "testkernel/boot_memory.h"
#include "testkernel/kprintf.h"
#include "testkernel/kstring.h"
#include "tests/qemu/ktest.h"

extern "C" {
void* memcpy(void* dst, const void* src, size_t n);
void* memmove(void* dst, const void* src, size_t n);
void* memset(void* dst, int c, size_t n);
int memcmp(const void* a, const void* b, size_t n);
}

namespace {

// Called through volatile pointers so the compiler cannot fold the calls into inline code.
void* (*volatile g_memcpy)(void*, const void*, size_t) = memcpy;
void* (*volatile g_memmove)(void*, const void*, size_t) = memmove;
void* (*volatile g_memset)(void*, int, size_t) = memset;
int (*volatile g_memcmp)(const void*, const void*, size_t) = memcmp;

constexpr size_t kLengths[] = {0, 1, 7, 8, 31, 33, 100, 257};
constexpr size_t kMoveLengths[] = {1, 9, 64, 200};

uint8_t g_a[512];
uint8_t g_b[512];

bool formats(const char* want, const char* got) {
  return kstr::equal(want, got);
}

}  // namespace

KTEST(kprintf_conversions) {
  char b[96];
  ksnprintf(b, sizeof(b), "%d %i %u %x %X %o %c %s %%", -42, 7, 42u, 0xbeefu, 0xbeefu, 8u, 'z',
            "str");
  KEXPECT_TRUE(formats("-42 7 42 beef BEEF 10 z str %", b));
  ksnprintf(b, sizeof(b), "[%5d][%-5d][%05d][%+d][% d][%.3d]", 42, 42, -42, 5, 5, 7);
  KEXPECT_TRUE(formats("[   42][42   ][-0042][+5][ 5][007]", b));
  ksnprintf(b, sizeof(b), "%llx %lx %zu %#x %#o %016llx", 0x1234'5678'9abc'def0ull, 0xfffful,
            size_t{123456}, 255u, 8u, 0xabcull);
  KEXPECT_TRUE(formats("123456789abcdef0 ffff 123456 0xff 010 0000000000000abc", b));
  ksnprintf(b, sizeof(b), "%lld %hhu %hd %d", static_cast<long long>(-9223372036854775807LL - 1),
            static_cast<unsigned char>(255), static_cast<short>(-3), 0);
  KEXPECT_TRUE(formats("-9223372036854775808 255 -3 0", b));
  ksnprintf(b, sizeof(b), "[%8s][%-4s][%.2s][%*d][%-*d]", "ab", "ab", "abcdef", 4, 9, 3, 1);
  KEXPECT_TRUE(formats("[      ab][ab  ][ab][   9][1  ]", b));
  ksnprintf(b, sizeof(b), "%p %s", reinterpret_cast<void*>(0x1000), static_cast<char*>(nullptr));
  KEXPECT_TRUE(formats("0x1000 (null)", b));
}

KTEST(kprintf_truncation) {
  char b[8];
  int n = ksnprintf(b, sizeof(b), "%s", "0123456789");
  KEXPECT_EQ(n, 10);
  KEXPECT_TRUE(formats("0123456", b));
  n = ksnprintf(b, 1, "%d", 12345);
  KEXPECT_EQ(n, 5);
  KEXPECT_EQ(b[0], '\0');
  char sz[32];
  KEXPECT_TRUE(formats("16 MiB", format_size(sz, sizeof(sz), 16ull << 20)));
  KEXPECT_TRUE(formats("1536 KiB", format_size(sz, sizeof(sz), 1536ull << 10)));
  KEXPECT_TRUE(formats("17 B", format_size(sz, sizeof(sz), 17)));
  KEXPECT_TRUE(formats("0 B", format_size(sz, sizeof(sz), 0)));
}

KTEST(libc_mem_all_alignments) {
  size_t errors = 0;
  for (size_t so = 0; so < 9; ++so) {
    for (size_t d = 0; d < 9; ++d) {
      for (size_t n : kLengths) {
        for (size_t i = 0; i < sizeof(g_a); ++i) {
          g_a[i] = static_cast<uint8_t>(i * 7 + 1);
          g_b[i] = 0xEE;
        }
        g_memcpy(g_b + d, g_a + so, n);
        for (size_t i = 0; i < sizeof(g_b); ++i) {
          uint8_t want = (i >= d && i < d + n) ? g_a[so + i - d] : 0xEE;
          errors += g_b[i] != want;
        }
        errors += g_memcmp(g_b + d, g_a + so, n) != 0;
        g_memset(g_b + d, 0x5A, n);
        for (size_t i = 0; i < sizeof(g_b); ++i) {
          uint8_t want = (i >= d && i < d + n) ? 0x5A : 0xEE;
          errors += g_b[i] != want;
        }
      }
    }
  }
  KEXPECT_EQ(errors, 0u);
  const uint8_t x[] = {1, 2, 3};
  const uint8_t y[] = {1, 2, 4};
  KEXPECT_LT(g_memcmp(x, y, 3), 0);
  KEXPECT_GT(g_memcmp(y, x, 3), 0);
  KEXPECT_EQ(g_memcmp(x, y, 2), 0);
}

KTEST(libc_memmove_overlaps) {
  size_t errors = 0;
  for (size_t from = 0; from < 40; from += 3) {
    for (size_t to = 0; to < 40; to += 5) {
      for (size_t n : kMoveLengths) {
        uint8_t ref[300];
        for (size_t i = 0; i < sizeof(ref); ++i) g_a[i] = ref[i] = static_cast<uint8_t>(i ^ 0x3c);
        // Reference: copy through a temporary.
        uint8_t tmp[300];
        for (size_t i = 0; i < n; ++i) tmp[i] = ref[from + i];
        for (size_t i = 0; i < n; ++i) ref[to + i] = tmp[i];
        g_memmove(g_a + to, g_a + from, n);
        for (size_t i = 0; i < sizeof(ref); ++i) errors += g_a[i] != ref[i];
      }
    }
  }
  KEXPECT_EQ(errors, 0u);
}

KTEST(cmdline_helpers) {
  char v[16];
  KEXPECT_TRUE(kstr::cmdline_value("a=1 mode=test  ktest=pfa", "mode", v, sizeof(v)));
  KEXPECT_TRUE(kstr::equal(v, "test"));
  KEXPECT_TRUE(kstr::cmdline_value("mode=test ktest=pfa", "ktest", v, sizeof(v)));
  KEXPECT_TRUE(kstr::equal(v, "pfa"));
  KEXPECT_FALSE(kstr::cmdline_value("modex=1 xmode=2", "mode", v, sizeof(v)));
  KEXPECT_TRUE(kstr::cmdline_value("mode=test ktest=a mode=demo", "mode", v, sizeof(v)));
  KEXPECT_TRUE(kstr::equal(v, "demo"));  // The last one wins.
  KEXPECT_TRUE(kstr::cmdline_value("mode=averyveryverylongvalue", "mode", v, 5));
  KEXPECT_TRUE(kstr::equal(v, "aver"));
  KEXPECT_TRUE(kstr::has_word(" a  mode=test b", "mode=test"));
  KEXPECT_FALSE(kstr::has_word("mode=testing", "mode=test"));
  KEXPECT_TRUE(kstr::contains("hello world", "o w"));
  KEXPECT_FALSE(kstr::contains("hello", "hello!"));
}

// The planner on a made-up machine: two RAM ranges, reserved pieces, lowest / highest placement,
// windows, and a full table.
KTEST(boot_memory_planner) {
  static BootMemory mem;  // Static: big, and the tests run on the boot stack.
  mem.~BootMemory();
  new (&mem) BootMemory();
  constexpr uint64_t kMiB = 1ull << 20;
  PhysRange ram[2];
  ram[0].base = PhysAddr(0x4000'0000);
  ram[0].size = 64 * kMiB;
  ram[1].base = PhysAddr(0x1'0000'0000);
  ram[1].size = 32 * kMiB;
  PhysRange res[2];
  res[0].base = PhysAddr(0x4000'0000);
  res[0].size = 1 * kMiB + 1;  // Rounded out to pages: [0x4000'0000, 0x4010'1000).
  res[1].base = PhysAddr(0x4100'0000);
  res[1].size = 4096;
  KREQUIRE_OK(mem.init({ram, 2}, {res, 2}, "test"));
  KEXPECT_EQ(mem.ram_bytes(), 96 * kMiB);
  KEXPECT_EQ(mem.free_bytes_in(0, ~0ull), 96 * kMiB - (kMiB + 4096) - 4096);
  auto lo = mem.find(kMiB, kMiB, 0, ~0ull, BootMemory::Placement::kLowest);
  KREQUIRE_OK(lo);
  KEXPECT_EQ(lo->value(), 0x4020'0000u);  // 0x4010'0000 holds the reserved range's last byte.
  auto hi = mem.find(kMiB, kMiB, 0, ~0ull, BootMemory::Placement::kHighest);
  KREQUIRE_OK(hi);
  KEXPECT_EQ(hi->value(), 0x1'0000'0000u + 31 * kMiB);
  auto below4g = mem.find(kMiB, kMiB, 0, 1ull << 32, BootMemory::Placement::kHighest);
  KREQUIRE_OK(below4g);
  KEXPECT_EQ(below4g->value(), 0x4000'0000u + 63 * kMiB);
  // Across the reserved page at 0x4100'0000: a 16 MiB piece fits only above it.
  auto big = mem.carve(16 * kMiB, kMiB, 0, 1ull << 32, BootMemory::Placement::kLowest, "big");
  KREQUIRE_OK(big);
  KEXPECT_EQ(big->value(), 0x4110'0000u);
  auto again = mem.find(48 * kMiB, kMiB, 0, 1ull << 32, BootMemory::Placement::kLowest);
  KEXPECT_ERR(again, ErrorCode::kNoMemory);
  KEXPECT_ERR(mem.find(0, kMiB, 0, ~0ull, BootMemory::Placement::kLowest), ErrorCode::kLayoutError);
  KEXPECT_ERR(mem.find(kMiB, 3 * 4096, 0, ~0ull, BootMemory::Placement::kLowest),
              ErrorCode::kLayoutError);
  KEXPECT_ERR(mem.find(kMiB, kMiB, 0, 0x4000'0000, BootMemory::Placement::kLowest),
              ErrorCode::kNoMemory);
  KEXPECT_EQ(mem.reserved().size(), 3u);
  KEXPECT_TRUE(kstr::equal(mem.reserved_what(2), "big"));
}
