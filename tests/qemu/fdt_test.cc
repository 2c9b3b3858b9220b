// In-VM tests of the device tree reader (testkernel/fdt.h) on blobs built here, so every
// architecture runs them, and of the boot information against the firmware's own tree where there
// is one.
#include "testkernel/fdt.h"
#include "testkernel/fdt_boot_info.h"
#include "testkernel/kernel_env.h"
#include "testkernel/kstring.h"
#include "tests/qemu/ktest.h"

namespace {

// Writes a flattened device tree: header, memory reservation block, structure, strings.
class FdtWriter {
 public:
  void reserve(uint64_t base, uint64_t size) {
    rsv_[num_rsv_][0] = base;
    rsv_[num_rsv_][1] = size;
    ++num_rsv_;
  }
  void begin(const char* name) {
    word(1);
    bytes(name, kstr::length(name) + 1);
    pad();
  }
  void end() { word(2); }
  void prop(const char* name, const void* data, uint32_t len) {
    word(3);
    word(len);
    word(string_offset(name));
    bytes(data, len);
    pad();
  }
  void prop_u32(const char* name, uint32_t v) {
    uint8_t b[4];
    be(b, v);
    prop(name, b, 4);
  }
  // Cells given as 32-bit values.
  void prop_cells(const char* name, const uint32_t* cells, uint32_t n) {
    uint8_t b[64];
    for (uint32_t i = 0; i < n; ++i) be(b + 4 * i, cells[i]);
    prop(name, b, 4 * n);
  }
  void prop_str(const char* name, const char* s) {
    prop(name, s, static_cast<uint32_t>(kstr::length(s) + 1));
  }
  void nop() { word(4); }

  // Assembles the blob into out (8-byte aligned); returns its size.
  uint32_t finish(uint8_t* out, uint32_t cap) {
    word(9);
    uint32_t off_rsv = 40;
    uint32_t off_struct = off_rsv + 16 * (num_rsv_ + 1);
    uint32_t off_strings = off_struct + slen_;
    uint32_t total = off_strings + strlen_;
    if (total > cap) return 0;
    for (uint32_t i = 0; i < total; ++i) out[i] = 0;
    be(out + 0, 0xd00dfeed);
    be(out + 4, total);
    be(out + 8, off_struct);
    be(out + 12, off_strings);
    be(out + 16, off_rsv);
    be(out + 20, 17);
    be(out + 24, 16);
    be(out + 28, 0);
    be(out + 32, strlen_);
    be(out + 36, slen_);
    for (uint32_t i = 0; i < num_rsv_; ++i) {
      be64(out + off_rsv + 16 * i, rsv_[i][0]);
      be64(out + off_rsv + 16 * i + 8, rsv_[i][1]);
    }
    for (uint32_t i = 0; i < slen_; ++i) out[off_struct + i] = s_[i];
    for (uint32_t i = 0; i < strlen_; ++i) out[off_strings + i] = str_[i];
    return total;
  }

 private:
  static void be(uint8_t* p, uint32_t v) {
    p[0] = static_cast<uint8_t>(v >> 24);
    p[1] = static_cast<uint8_t>(v >> 16);
    p[2] = static_cast<uint8_t>(v >> 8);
    p[3] = static_cast<uint8_t>(v);
  }
  static void be64(uint8_t* p, uint64_t v) {
    be(p, static_cast<uint32_t>(v >> 32));
    be(p + 4, static_cast<uint32_t>(v));
  }
  void word(uint32_t v) {
    be(s_ + slen_, v);
    slen_ += 4;
  }
  void bytes(const void* d, size_t n) {
    for (size_t i = 0; i < n; ++i) s_[slen_++] = static_cast<const uint8_t*>(d)[i];
  }
  void pad() {
    while (slen_ % 4 != 0) s_[slen_++] = 0;
  }
  uint32_t string_offset(const char* name) {
    for (uint32_t i = 0; i < strlen_;) {
      auto s = reinterpret_cast<const char*>(str_ + i);
      if (kstr::equal(s, name)) return i;
      i += static_cast<uint32_t>(kstr::length(s) + 1);
    }
    uint32_t off = strlen_;
    size_t n = kstr::length(name) + 1;
    for (size_t i = 0; i < n; ++i) str_[strlen_++] = static_cast<uint8_t>(name[i]);
    return off;
  }

  uint8_t s_[3072] = {};
  uint32_t slen_ = 0;
  uint8_t str_[1024] = {};
  uint32_t strlen_ = 0;
  uint64_t rsv_[4][2] = {};
  uint32_t num_rsv_ = 0;
};

alignas(8) uint8_t g_blob[4096];
FdtWriter g_writer;

// A tree shaped like QEMU's riscv64 virt machine after OpenSBI, plus corner cases.
uint32_t build_sample() {
  FdtWriter& w = g_writer;
  w = FdtWriter();
  w.reserve(0x8000'0000, 0x1000);
  w.begin("");
  w.prop_u32("#address-cells", 2);
  w.prop_u32("#size-cells", 2);
  w.prop_str("compatible", "riscv-virtio");
  w.nop();
  {
    w.begin("chosen");
    w.prop_str("bootargs", "mode=test ktest=fdt");
    w.prop_str("stdout-path", "/soc/serial@10000000");
    w.end();
  }
  {
    w.begin("memory@80000000");
    w.prop_str("device_type", "memory");
    const uint32_t reg[] = {0, 0x8000'0000, 0, 0x4000'0000, 0x1, 0x0, 0x0, 0x2000'0000};
    w.prop_cells("reg", reg, 8);
    w.end();
  }
  {
    w.begin("memory@200000000");
    w.prop_str("device_type", "memory");
    w.prop_str("status", "disabled");
    const uint32_t reg[] = {0x2, 0, 0, 0x1000'0000};
    w.prop_cells("reg", reg, 4);
    w.end();
  }
  {
    w.begin("reserved-memory");
    w.prop_u32("#address-cells", 2);
    w.prop_u32("#size-cells", 2);
    w.prop("ranges", nullptr, 0);
    w.begin("mmode_resources0@80000000");
    const uint32_t reg[] = {0, 0x8000'0000, 0, 0x4'0000};
    w.prop_cells("reg", reg, 4);
    w.prop("no-map", nullptr, 0);
    w.end();
    w.begin("dynamic");  // No reg: placed by the OS, skipped.
    const uint32_t size[] = {0, 0x10'0000};
    w.prop_cells("size", size, 2);
    w.end();
    w.end();
  }
  {
    w.begin("cpus");
    w.prop_u32("#address-cells", 1);
    w.prop_u32("#size-cells", 0);
    w.prop_u32("timebase-frequency", 10'000'000);
    w.begin("cpu@0");
    w.prop_str("device_type", "cpu");
    w.prop_u32("reg", 0);
    w.prop_str("riscv,isa", "rv64imafdc_zicbom1p0_zicboz_svpbmt");
    w.prop_u32("riscv,cbom-block-size", 64);
    w.end();
    w.begin("cpu@1");
    w.prop_str("device_type", "cpu");
    w.prop_u32("reg", 1);
    static const char kExt[] = "i\0m\0a\0zicbom\0svpbmt";
    w.prop("riscv,isa-extensions", kExt, sizeof(kExt));
    w.prop_str("riscv,isa", "rv64ima");  // Ignored: the extension list wins.
    w.end();
    w.begin("cpu@2");
    w.prop_str("device_type", "cpu");
    w.prop_str("status", "disabled");
    w.end();
    w.begin("cpu-map");
    w.end();
    w.end();
  }
  {
    w.begin("soc");
    w.prop_u32("#address-cells", 2);
    w.prop_u32("#size-cells", 2);
    w.prop_str("compatible", "simple-bus");
    w.prop("ranges", nullptr, 0);
    w.begin("serial@10000000");
    static const char kCompat[] = "vendor,uart\0ns16550a";
    w.prop("compatible", kCompat, sizeof(kCompat));
    const uint32_t reg[] = {0, 0x1000'0000, 0, 0x100};
    w.prop_cells("reg", reg, 4);
    w.end();
    w.begin("pci@30000000");
    w.prop_str("compatible", "pci-host-ecam-generic");
    const uint32_t ecam[] = {0, 0x3000'0000, 0, 0x1000'0000};
    w.prop_cells("reg", ecam, 4);
    w.end();
    w.end();
  }
  w.end();
  return w.finish(g_blob, sizeof(g_blob));
}

}  // namespace

KTEST(fdt_header_and_walk) {
  uint32_t size = build_sample();
  KREQUIRE_TRUE(size != 0);
  auto f = Fdt::from(g_blob);
  KREQUIRE_OK(f);
  KEXPECT_EQ(f->total_size(), size);
  KEXPECT_EQ(Fdt::peek_total_size(g_blob), size);
  FdtNode root = f->root();
  KREQUIRE_TRUE(root.valid());
  KEXPECT_TRUE(kstr::equal(f->name(root), ""));
  KEXPECT_TRUE(f->is_compatible(root, "riscv-virtio"));
  // Children of the root, in order.
  const char* want[] = {"chosen", "memory@80000000", "memory@200000000", "reserved-memory", "cpus",
                        "soc"};
  size_t i = 0;
  for (FdtNode c = f->first_child(root); c.valid(); c = f->next_sibling(c), ++i) {
    KREQUIRE_TRUE(i < 6);
    KEXPECT_TRUE(kstr::equal(f->name(c), want[i]));
    KEXPECT_TRUE(f->parent(c) == root);
  }
  KEXPECT_EQ(i, 6u);
  FdtNode uart = f->find_path("/soc/serial@10000000");
  KREQUIRE_TRUE(uart.valid());
  KEXPECT_TRUE(f->find_path("/soc/serial") == uart);  // Without the unit address.
  KEXPECT_TRUE(f->parent(uart) == f->find_path("/soc"));
  KEXPECT_FALSE(f->find_path("/soc/serial@1").valid());
  KEXPECT_FALSE(f->find_path("/nothere").valid());
  KEXPECT_TRUE(f->find_compatible("ns16550a") == uart);
  KEXPECT_FALSE(f->find_compatible("ns16550a", uart).valid());
  KEXPECT_TRUE(f->find_compatible("pci-host-ecam-generic").valid());
  auto reg = f->reg(uart, 0);
  KREQUIRE_OK(reg);
  KEXPECT_EQ(reg->base.value(), 0x1000'0000u);
  KEXPECT_EQ(reg->size, 0x100u);
  KEXPECT_ERR(f->reg(uart, 1), ErrorCode::kOutOfRange);
  KEXPECT_TRUE(kstr::equal(f->stdout_path(), "/soc/serial@10000000"));
}

KTEST(fdt_memory_reserved_chosen_cpus) {
  KREQUIRE_TRUE(build_sample() != 0);
  auto f = Fdt::from(g_blob);
  KREQUIRE_OK(f);
  PhysRange r[8];
  KEXPECT_EQ(f->memory_ranges(r, 8), 2u);  // The disabled node does not count.
  KEXPECT_EQ(r[0].base.value(), 0x8000'0000u);
  KEXPECT_EQ(r[0].size, 0x4000'0000u);
  KEXPECT_EQ(r[1].base.value(), 0x1'0000'0000u);
  KEXPECT_EQ(r[1].size, 0x2000'0000u);
  KEXPECT_EQ(f->memory_ranges(r, 1), 2u);  // Reports the count even when out of room.
  KEXPECT_EQ(f->memreserve_count(), 1u);
  KEXPECT_EQ(f->reserved_ranges(r, 8), 2u);
  KEXPECT_EQ(r[0].base.value(), 0x8000'0000u);
  KEXPECT_EQ(r[0].size, 0x1000u);
  KEXPECT_EQ(r[1].base.value(), 0x8000'0000u);
  KEXPECT_EQ(r[1].size, 0x4'0000u);
  KEXPECT_TRUE(kstr::equal(f->bootargs(), "mode=test ktest=fdt"));
  KEXPECT_EQ(f->cpu_count(), 2u);
  auto tb = f->prop_u32(f->find_path("/cpus"), "timebase-frequency");
  KREQUIRE_OK(tb);
  KEXPECT_EQ(*tb, 10'000'000u);

  arch::BootInfo info;
  KEXPECT_OK(boot_info_from_fdt(*f, PhysAddr(0x8220'0000), &info));
  KEXPECT_EQ(info.num_ram, 2u);
  KEXPECT_EQ(info.num_reserved, 3u);  // memreserve, reserved-memory child, the blob itself.
  KEXPECT_EQ(info.reserved[2].base.value(), 0x8220'0000u);
  KEXPECT_EQ(info.reserved[2].size, f->total_size());
  KEXPECT_EQ(info.num_cpus, 2u);
  KEXPECT_TRUE(kstr::equal(info.cmdline, "mode=test ktest=fdt"));
}

KTEST(fdt_riscv_isa_queries) {
  KREQUIRE_TRUE(build_sample() != 0);
  auto f = Fdt::from(g_blob);
  KREQUIRE_OK(f);
  FdtNode c0 = f->cpu_node(0);
  FdtNode c1 = f->cpu_node(1);
  KREQUIRE_TRUE(c0.valid() && c1.valid());
  KEXPECT_TRUE(f->riscv_has_extension(c0, "zicbom"));  // With a version suffix.
  KEXPECT_TRUE(f->riscv_has_extension(c0, "ZICBOZ"));
  KEXPECT_TRUE(f->riscv_has_extension(c0, "svpbmt"));
  KEXPECT_TRUE(f->riscv_has_extension(c0, "c"));
  KEXPECT_TRUE(f->riscv_has_extension(c0, "d"));
  KEXPECT_FALSE(f->riscv_has_extension(c0, "zicbo"));
  KEXPECT_FALSE(f->riscv_has_extension(c0, "h"));
  KEXPECT_FALSE(f->riscv_has_extension(c0, "sv"));
  KEXPECT_TRUE(f->riscv_has_extension(c1, "zicbom"));
  KEXPECT_FALSE(f->riscv_has_extension(c1, "c"));
  KEXPECT_TRUE(f->riscv_all_cpus_have("zicbom"));
  KEXPECT_TRUE(f->riscv_all_cpus_have("svpbmt"));
  KEXPECT_FALSE(f->riscv_all_cpus_have("zicboz"));
  auto cbom = f->riscv_cbom_block_size();
  KREQUIRE_OK(cbom);
  KEXPECT_EQ(*cbom, 64u);
}

KTEST(fdt_rejects_bad_blobs) {
  uint32_t size = build_sample();
  KREQUIRE_TRUE(size != 0);
  KEXPECT_ERR(Fdt::from(nullptr), ErrorCode::kInvalidArgument);
  g_blob[0] ^= 0xff;  // Magic.
  KEXPECT_ERR(Fdt::from(g_blob), ErrorCode::kInvalidArgument);
  KEXPECT_EQ(Fdt::peek_total_size(g_blob), 0u);
  g_blob[0] ^= 0xff;
  auto set_total = [](uint32_t v) {
    for (int i = 0; i < 4; ++i) g_blob[4 + i] = static_cast<uint8_t>(v >> (24 - 8 * i));
  };
  set_total(size - 8);  // totalsize below the strings block's end.
  KEXPECT_ERR(Fdt::from(g_blob), ErrorCode::kInvalidArgument);
  set_total(size);
  KEXPECT_OK(Fdt::from(g_blob));
  // A truncated structure block: walking stops instead of reading past it.
  auto f = Fdt::from(g_blob);
  KREQUIRE_OK(f);
  uint32_t off_struct = Fdt::be32(g_blob + 8);
  g_blob[off_struct + 3] = 0x77;  // The root's FDT_BEGIN_NODE becomes an unknown token.
  KEXPECT_ERR(Fdt::from(g_blob), ErrorCode::kInvalidArgument);
  KEXPECT_FALSE(f->root().valid());
  PhysRange r[4];
  KEXPECT_EQ(f->memory_ranges(r, 4), 0u);
  KEXPECT_EQ(f->cpu_count(), 0u);
}

// The boot information agrees with the firmware's description (device tree or PVH map).
KTEST(boot_info_matches_firmware) {
  const KernelEnv& env = kernel_env();
  const arch::BootInfo& b = *env.boot;
  KREQUIRE_TRUE(b.num_ram >= 1 && b.num_ram <= arch::kMaxMemRanges);
  for (size_t i = 0; i < b.num_ram; ++i) {
    KEXPECT_GT(b.ram[i].size, 0u);
    for (size_t j = 0; j < i; ++j) {
      KEXPECT_FALSE(b.ram[i].base < b.ram[j].end() && b.ram[j].base < b.ram[i].end());
    }
  }
  KEXPECT_NE(b.direct_map_offset, 0u);
  KEXPECT_GE(b.num_cpus, 1u);
  KEXPECT_TRUE(kstr::has_word(b.cmdline, "mode=test"));
  if (b.fdt != nullptr) {
    auto f = Fdt::from(b.fdt);
    KREQUIRE_OK(f);
    PhysRange r[arch::kMaxMemRanges];
    size_t n = f->memory_ranges(r, arch::kMaxMemRanges);
    KEXPECT_EQ(n, b.num_ram);
    for (size_t i = 0; i < n && i < b.num_ram; ++i) {
      KEXPECT_EQ(r[i].base, b.ram[i].base);
      KEXPECT_EQ(r[i].size, b.ram[i].size);
    }
    KEXPECT_EQ(f->cpu_count(), b.num_cpus);
    KEXPECT_TRUE(kstr::equal(f->bootargs(), b.cmdline));
    // The blob lies in reserved memory, reached through the direct map.
    auto blob = reinterpret_cast<uintptr_t>(b.fdt);
    KREQUIRE_TRUE(blob >= b.direct_map_offset);
    PhysAddr pa(blob - b.direct_map_offset);
    KEXPECT_TRUE(env.in_ram(pa, f->total_size()));
    KEXPECT_TRUE(env.overlaps_reserved(pa, f->total_size()));
  }
}
