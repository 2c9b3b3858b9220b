// Fdt: a read-only reader of a flattened device tree blob (the DTB format of the Devicetree
// Specification, version 16/17), for the boot code of the aarch64 and riscv64 test kernels.
//
// The scheme: the blob is never copied or modified. A node is named by the offset of its
// FDT_BEGIN_NODE token inside the structure block; walking goes token by token, and every read is
// bounds-checked against the sizes in the header, so a corrupt blob gives "not found" answers,
// never a wild read. All multi-byte values are big-endian and read a byte at a time, so the reader
// also works on memory where unaligned or wide accesses would fault (MMU off).
//
// Costs: property lookup is linear in the node's properties; child and sibling steps are linear in
// the skipped subtree; path lookup and parent() are linear in the blob. Boot code calls these a
// few dozen times, on blobs of a few KiB.
//
// Threading: an Fdt is an immutable view; any number of CPUs may read it at once.
#pragma once

#include "dmakit/dma_types.h"
#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

// A node of the tree: the offset of its FDT_BEGIN_NODE token in the structure block, or invalid.
struct FdtNode {
  int32_t offset = -1;
  constexpr bool valid() const { return offset >= 0; }
  constexpr bool operator==(const FdtNode&) const = default;
};

// A property's raw value: `len` bytes at `data` (inside the blob). `data` is null if absent.
struct FdtProp {
  const uint8_t* data = nullptr;
  uint32_t len = 0;
  constexpr bool found() const { return data != nullptr; }
};

class Fdt {
 public:
  static constexpr uint32_t kMagic = 0xd00dfeed;
  // The header is 40 bytes; a caller that must map the blob before reading it maps this much,
  // reads total_size(), then maps the rest.
  static constexpr uint32_t kHeaderSize = 40;

  constexpr Fdt() = default;

  // Checks the header of the blob at `blob` (magic, version >= 16, blocks inside totalsize and
  // not overlapping the header, structure block 4-byte aligned) and returns a reader for it.
  // Ownership: the blob stays owned by the caller and must stay mapped at `blob` while the reader
  // or anything it returned (names, property data) is used.
  // Errors: kInvalidArgument (null, bad magic, unsupported version, inconsistent header).
  static Result<Fdt> from(const void* blob);

  // Reads the magic and totalsize fields only (for early boot code deciding what to map).
  // Returns 0 when the magic is wrong.
  static uint32_t peek_total_size(const void* blob);

  const void* blob() const { return base_; }
  uint32_t total_size() const { return total_size_; }
  uint32_t boot_cpuid() const { return boot_cpuid_; }

  // --- Tree walking -------------------------------------------------------------------------

  // The root node ("/").
  FdtNode root() const;
  // Node name with its unit address ("memory@40000000"); "" for the root. Never null for a valid
  // node; null for an invalid one.
  const char* name(FdtNode n) const;
  // First child / next sibling of a node, or an invalid node.
  FdtNode first_child(FdtNode n) const;
  FdtNode next_sibling(FdtNode n) const;
  // The parent of a node (invalid for the root). Linear in the blob.
  FdtNode parent(FdtNode n) const;
  // The node after `n` in document order (depth first), or invalid at the end. `depth`, if not
  // null, is adjusted by the change in depth (+1 into a child, 0 to a sibling, negative up).
  FdtNode next_node(FdtNode n, int* depth = nullptr) const;

  // Looks a node up by absolute path ("/cpus", "/reserved-memory", "/memory@40000000"). A path
  // component without '@' also matches a node name with a unit address ("/memory" matches
  // "memory@40000000"); the first match in document order wins.
  FdtNode find_path(const char* path) const;
  // Child of `parent` named `name` (same matching rule as find_path).
  FdtNode find_child(FdtNode parent, const char* name) const;
  // The first node after `after` (or from the start, if invalid) whose "compatible" list holds
  // `compat`. Iterate with `for (n = find_compatible(c); n.valid(); n = find_compatible(c, n))`.
  FdtNode find_compatible(const char* compat, FdtNode after = FdtNode{}) const;

  // --- Properties -----------------------------------------------------------------------------

  FdtProp prop(FdtNode n, const char* prop_name) const;
  bool has_prop(FdtNode n, const char* prop_name) const { return prop(n, prop_name).found(); }
  // A 32-bit cell property. Errors: kNotFound (absent), kInvalidArgument (not 4 bytes).
  Result<uint32_t> prop_u32(FdtNode n, const char* prop_name) const;
  // A property of one or two cells as a 64-bit number. Errors: kNotFound, kInvalidArgument.
  Result<uint64_t> prop_u64(FdtNode n, const char* prop_name) const;
  // A NUL-terminated string property (the first string of a list), or null if absent or not
  // terminated inside the property.
  const char* prop_string(FdtNode n, const char* prop_name) const;
  // Whether a string-list property (e.g. "compatible") contains `s` exactly.
  bool prop_list_contains(FdtNode n, const char* prop_name, const char* s) const;
  bool is_compatible(FdtNode n, const char* compat) const {
    return prop_list_contains(n, "compatible", compat);
  }
  // False only when "status" is present and is neither "okay" nor "ok".
  bool is_enabled(FdtNode n) const;

  // #address-cells / #size-cells that `n` gives its children (defaults 2 and 1 per the spec).
  uint32_t address_cells(FdtNode n) const;
  uint32_t size_cells(FdtNode n) const;

  // Number of (address, size) pairs in `n`'s "reg", using its parent's cell counts.
  // Errors: kNotFound (no reg), kNotSupported (more than 2 cells per number),
  // kInvalidArgument (length not a multiple of the entry size).
  Result<size_t> reg_count(FdtNode n) const;
  // The index-th "reg" entry of `n` as a physical range. Errors: as reg_count, plus kOutOfRange.
  Result<PhysRange> reg(FdtNode n, size_t index) const;

  // The DMA windows of `n`'s bus: the "dma-ranges" of `n` or of its nearest ancestor that has
  // one, each (child-bus-address, parent-bus-address, length) entry as a DmaWindow (dma_base =
  // child address, the device's; cpu_base = parent address, taken as physical: one level of
  // translation, as on QEMU's virt machines and the Raspberry Pi 4's SoC bus). Child addresses use
  // the bus node's #address-cells, parent addresses its parent's, lengths the bus node's
  // #size-cells. A PCI bus (is_pci_bus: a host bridge such as the Raspberry Pi 4's
  // pcie@7d500000 or QEMU's pcie@10000000) has 3-cell child addresses, phys.hi then the 64-bit bus
  // address: dma_base is the bus address and phys.hi (the space code and flags) is not
  // interpreted. Writes at most `max`; returns how many entries exist (an empty "dma-ranges",
  // identity, gives 0). Errors: kNotFound (no dma-ranges on the path to the root), kNotSupported
  // (more than 2 cells per number, except a PCI bus's 3-cell child address), kInvalidArgument
  // (length not a multiple of an entry, or an entry of length 0).
  Result<size_t> dma_ranges(FdtNode n, DmaWindow* out, size_t max) const;
  // Whether `n` is a PCI bus: its device_type is "pci" (the PCI bus binding) or "pciex" (the PCI
  // Express spelling some older trees use). The node's #address-cells alone does not say: other
  // buses may use 3 cells with another meaning.
  bool is_pci_bus(FdtNode n) const;

  // Reads `cells` (1 or 2; 0 yields 0) big-endian cells at `p`.
  static uint64_t read_cells(const uint8_t* p, uint32_t cells);
  static uint32_t be32(const uint8_t* p);

  // --- The memory reservation block (/memreserve/ in a .dts) ----------------------------------

  // Number of entries (the block ends with a zero entry; at most 64 are read).
  size_t memreserve_count() const;
  // Entry i. Precondition: i < memreserve_count().
  PhysRange memreserve(size_t i) const;

  // --- Common queries --------------------------------------------------------------------------

  // RAM: the "reg" ranges of every enabled root child whose device_type is "memory". Writes at
  // most `max`; returns how many exist (a count above `max` means some were not written).
  size_t memory_ranges(PhysRange* out, size_t max) const;
  // Reserved memory: the /memreserve/ entries, then the "reg" ranges of the /reserved-memory
  // children (dynamically placed children without "reg" have no address yet and are skipped).
  // Same counting rule as memory_ranges.
  size_t reserved_ranges(PhysRange* out, size_t max) const;
  // /chosen "bootargs", or "" if absent.
  const char* bootargs() const;
  // /chosen "stdout-path" (or the older "linux,stdout-path"), or null.
  const char* stdout_path() const;
  // Enabled /cpus children with device_type "cpu".
  unsigned cpu_count() const;
  // The index-th enabled cpu node, or invalid.
  FdtNode cpu_node(unsigned index) const;

  // --- RISC-V ------------------------------------------------------------------------------------

  // The "riscv,isa" string of a cpu node (e.g. "rv64imafdch_zicbom_zicboz_svpbmt"), or null.
  const char* riscv_isa(FdtNode cpu) const;
  // Whether a cpu node declares ISA extension `ext` ("zicbom", "svpbmt", or a single letter "c"):
  // from "riscv,isa-extensions" when present, else by parsing "riscv,isa". Case-insensitive.
  bool riscv_has_extension(FdtNode cpu, const char* ext) const;
  // Whether every enabled cpu declares `ext` (false if there are no cpus).
  bool riscv_all_cpus_have(const char* ext) const;
  // "riscv,cbom-block-size" of the first enabled cpu that has one.
  // Errors: kNotFound, kInvalidArgument (not a 4-byte cell).
  Result<uint32_t> riscv_cbom_block_size() const;

 private:
  // Token at structure offset `off`; fills *next with the offset of the following token.
  // Returns 0 (an invalid token) when the blob is malformed at that point.
  uint32_t token(uint32_t off, uint32_t* next) const;
  // Reads a string at `off` in the structure block, bounds-checked; null if not terminated.
  const char* struct_string(uint32_t off, uint32_t* len) const;
  const char* strings_at(uint32_t nameoff) const;
  const uint8_t* structure() const { return base_ + struct_off_; }

  const uint8_t* base_ = nullptr;
  uint32_t total_size_ = 0;
  uint32_t struct_off_ = 0;
  uint32_t struct_size_ = 0;
  uint32_t strings_off_ = 0;
  uint32_t strings_size_ = 0;
  uint32_t rsvmap_off_ = 0;
  uint32_t boot_cpuid_ = 0;
};
