// The test kernel's dma-ranges parsing (Fdt::dma_ranges, issue 15 item 3) on a device tree blob
// built here by hand: several windows with different cell counts, inheritance from the bus, an
// empty (identity) property, malformed ones, and PCI host bridges (3-cell child addresses).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "testkernel/fdt.h"

namespace {

// Writes a flattened device tree (version 17) token by token.
class FdtBuilder {
 public:
  void begin_node(const char* name) {
    u32(&structure_, 1);
    bytes(&structure_, name, std::strlen(name) + 1);
    pad(&structure_);
  }
  void end_node() { u32(&structure_, 2); }
  void prop(const char* name, const std::vector<uint32_t>& cells) {
    std::vector<uint8_t> v;
    for (uint32_t c : cells) u32(&v, c);
    prop_bytes(name, v);
  }
  void prop_string(const char* name, const char* value) {
    prop_bytes(name, std::vector<uint8_t>(value, value + std::strlen(value) + 1));
  }
  void prop_bytes(const char* name, const std::vector<uint8_t>& v) {
    u32(&structure_, 3);
    u32(&structure_, static_cast<uint32_t>(v.size()));
    u32(&structure_, name_offset(name));
    bytes(&structure_, v.data(), v.size());
    pad(&structure_);
  }
  std::vector<uint8_t> finish() {
    u32(&structure_, 9);
    const uint32_t rsv = 40, st = rsv + 16;
    const uint32_t str = st + static_cast<uint32_t>(structure_.size());
    const uint32_t total = str + static_cast<uint32_t>(strings_.size());
    std::vector<uint8_t> blob;
    for (uint32_t v :
         {0xd00dfeedu, total, st, str, rsv, 17u, 16u, 0u, static_cast<uint32_t>(strings_.size()),
          static_cast<uint32_t>(structure_.size())}) {
      u32(&blob, v);
    }
    blob.resize(st, 0);  // The empty memory reservation block.
    blob.insert(blob.end(), structure_.begin(), structure_.end());
    blob.insert(blob.end(), strings_.begin(), strings_.end());
    return blob;
  }

 private:
  static void u32(std::vector<uint8_t>* v, uint32_t x) {
    for (int s = 24; s >= 0; s -= 8) v->push_back(static_cast<uint8_t>(x >> s));
  }
  static void bytes(std::vector<uint8_t>* v, const void* p, size_t n) {
    auto* b = static_cast<const uint8_t*>(p);
    v->insert(v->end(), b, b + n);
  }
  static void pad(std::vector<uint8_t>* v) {
    while (v->size() % 4 != 0) v->push_back(0);
  }
  uint32_t name_offset(const char* name) {
    std::string s(strings_.begin(), strings_.end());
    size_t at = 0;
    while (at < s.size()) {
      if (std::strcmp(s.c_str() + at, name) == 0) return static_cast<uint32_t>(at);
      at += std::strlen(s.c_str() + at) + 1;
    }
    auto off = static_cast<uint32_t>(strings_.size());
    bytes(&strings_, name, std::strlen(name) + 1);
    return off;
  }
  std::vector<uint8_t> structure_;
  std::vector<uint8_t> strings_;
};

class FdtDmaRangesTest : public testing::Test {
 protected:
  FdtDmaRangesTest() {
    FdtBuilder b;
    b.begin_node("");
    b.prop("#address-cells", {2});
    b.prop("#size-cells", {2});
    // The Raspberry Pi 4 shape: a 32-bit bus whose masters see the first GiB of RAM at 0xC000'0000
    // and a second window for RAM above 4 GiB.
    b.begin_node("soc");
    b.prop("#address-cells", {1});
    b.prop("#size-cells", {1});
    b.prop("dma-ranges", {0xC000'0000, 0x0, 0x0000'0000, 0x4000'0000,  //
                          0x8000'0000, 0x1, 0x0000'0000, 0x1000'0000});
    b.begin_node("ethernet@7d580000");
    b.prop("reg", {0x7d58'0000, 0x1'0000});
    b.end_node();
    b.end_node();
    b.begin_node("identity");
    b.prop("#address-cells", {2});
    b.prop("#size-cells", {2});
    b.prop_bytes("dma-ranges", {});
    b.begin_node("dev@0");
    b.end_node();
    b.end_node();
    b.begin_node("plain");
    b.prop("#address-cells", {1});
    b.prop("#size-cells", {1});
    b.begin_node("dev@0");
    b.end_node();
    b.end_node();
    b.begin_node("truncated");
    b.prop("#address-cells", {1});
    b.prop("#size-cells", {1});
    b.prop("dma-ranges", {0x0, 0x0, 0x4000'0000, 0x1000, 0x0});  // 20 bytes; entries are 16.
    b.end_node();
    b.begin_node("empty-window");
    b.prop("#address-cells", {1});
    b.prop("#size-cells", {1});
    b.prop("dma-ranges", {0x0, 0x0, 0x4000'0000, 0x0});
    b.end_node();
    b.begin_node("wide");
    b.prop("#address-cells", {4});
    b.prop("#size-cells", {2});
    b.prop("dma-ranges", {0, 0, 0, 0, 0, 0, 0, 1});
    b.end_node();
    // The Raspberry Pi 4's PCIe host bridge shape: a PCI bus (3-cell child addresses: phys.hi,
    // then the 64-bit bus address) whose one 32-bit memory-space window maps bus 0 to CPU 0 over
    // the low 3 GiB.
    b.begin_node("pcie@7d500000");
    b.prop_string("device_type", "pci");
    b.prop("#address-cells", {3});
    b.prop("#size-cells", {2});
    b.prop("dma-ranges", {0x0200'0000, 0x0, 0x0, 0x0, 0x0, 0x0, 0xC000'0000});
    b.end_node();
    // Two windows, neither of them identity, with flags in phys.hi (prefetchable 32-bit, 64-bit)
    // and a device below the bridge.
    b.begin_node("pcie@10000000");
    b.prop_string("device_type", "pci");
    b.prop("#address-cells", {3});
    b.prop("#size-cells", {2});
    b.prop("dma-ranges", {0x4200'0000, 0x0, 0x8000'0000, 0x0, 0x4000'0000, 0x0, 0x1000'0000,  //
                          0x0300'0000, 0x1, 0x0, 0x2, 0x0, 0x1, 0x0});
    b.begin_node("ethernet@1,0");
    b.prop("reg", {0x0800, 0, 0, 0, 0});
    b.end_node();
    b.end_node();
    // Three address cells on a bus that is not PCI: what the third cell means is unknown.
    b.begin_node("three-cells");
    b.prop("#address-cells", {3});
    b.prop("#size-cells", {2});
    b.prop("dma-ranges", {0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x1000});
    b.end_node();
    b.end_node();
    blob_ = b.finish();
    auto f = Fdt::from(blob_.data());
    EXPECT_TRUE(f.ok());
    if (f.ok()) fdt_ = *f;
  }
  std::vector<uint8_t> blob_;
  Fdt fdt_;
};

TEST_F(FdtDmaRangesTest, EveryEntryBecomesAWindow) {
  DmaWindow w[4];
  auto n = fdt_.dma_ranges(fdt_.find_path("/soc"), w, 4);
  ASSERT_TRUE(n.ok());
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(w[0].dma_base.value(), 0xC000'0000u);
  EXPECT_EQ(w[0].cpu_base.value(), 0x0u);
  EXPECT_EQ(w[0].size, 0x4000'0000u);
  EXPECT_EQ(w[1].dma_base.value(), 0x8000'0000u);
  EXPECT_EQ(w[1].cpu_base.value(), 0x1'0000'0000u);
  EXPECT_EQ(w[1].size, 0x1000'0000u);
}

TEST_F(FdtDmaRangesTest, ADeviceInheritsItsBussWindows) {
  DmaWindow w[4];
  auto n = fdt_.dma_ranges(fdt_.find_path("/soc/ethernet"), w, 4);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 2u);
  EXPECT_EQ(w[1].cpu_base.value(), 0x1'0000'0000u);
}

TEST_F(FdtDmaRangesTest, CountsBeyondMaxAndWritesOnlyMax) {
  DmaWindow w[2] = {};
  w[1].size = 77;
  auto n = fdt_.dma_ranges(fdt_.find_path("/soc"), w, 1);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 2u);
  EXPECT_EQ(w[0].size, 0x4000'0000u);
  EXPECT_EQ(w[1].size, 77u);
}

TEST_F(FdtDmaRangesTest, EmptyIsIdentityAndAbsentIsNotFound) {
  DmaWindow w[1];
  auto id = fdt_.dma_ranges(fdt_.find_path("/identity/dev@0"), w, 1);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, 0u);
  EXPECT_EQ(fdt_.dma_ranges(fdt_.find_path("/plain/dev@0"), w, 1).code(), ErrorCode::kNotFound);
}

TEST_F(FdtDmaRangesTest, MalformedPropertiesAreRefusedAndWriteNothing) {
  DmaWindow w[1] = {};
  w[0].size = 5;
  EXPECT_EQ(fdt_.dma_ranges(fdt_.find_path("/truncated"), w, 1).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(fdt_.dma_ranges(fdt_.find_path("/empty-window"), w, 1).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(fdt_.dma_ranges(fdt_.find_path("/wide"), w, 1).code(), ErrorCode::kNotSupported);
  EXPECT_EQ(w[0].size, 5u);
}

TEST_F(FdtDmaRangesTest, APciBridgesOneWindowSkipsPhysHi) {
  DmaWindow w[2];
  auto n = fdt_.dma_ranges(fdt_.find_path("/pcie@7d500000"), w, 2);
  ASSERT_TRUE(n.ok()) << error_code_name(n.code());
  ASSERT_EQ(*n, 1u);
  EXPECT_EQ(w[0].dma_base.value(), 0x0u);
  EXPECT_EQ(w[0].cpu_base.value(), 0x0u);
  EXPECT_EQ(w[0].size, 0xC000'0000u);
}

TEST_F(FdtDmaRangesTest, APciBridgesTwoWindowsTakeTheLowTwoCellsAsTheBusAddress) {
  DmaWindow w[4];
  auto n = fdt_.dma_ranges(fdt_.find_path("/pcie@10000000"), w, 4);
  ASSERT_TRUE(n.ok()) << error_code_name(n.code());
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(w[0].dma_base.value(), 0x8000'0000u);
  EXPECT_EQ(w[0].cpu_base.value(), 0x4000'0000u);
  EXPECT_EQ(w[0].size, 0x1000'0000u);
  EXPECT_EQ(w[1].dma_base.value(), 0x1'0000'0000u);
  EXPECT_EQ(w[1].cpu_base.value(), 0x2'0000'0000u);
  EXPECT_EQ(w[1].size, 0x1'0000'0000u);
}

TEST_F(FdtDmaRangesTest, ADeviceUnderAPciBridgeInheritsItsWindows) {
  DmaWindow w[4];
  auto n = fdt_.dma_ranges(fdt_.find_path("/pcie@10000000/ethernet@1,0"), w, 4);
  ASSERT_TRUE(n.ok()) << error_code_name(n.code());
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(w[0].dma_base.value(), 0x8000'0000u);
  EXPECT_EQ(w[1].cpu_base.value(), 0x2'0000'0000u);
}

TEST_F(FdtDmaRangesTest, ThreeCellsOnABusThatIsNotPciAreNotSupported) {
  DmaWindow w[1] = {};
  w[0].size = 9;
  EXPECT_EQ(fdt_.dma_ranges(fdt_.find_path("/three-cells"), w, 1).code(), ErrorCode::kNotSupported);
  EXPECT_EQ(w[0].size, 9u);
}

}  // namespace
