// IommuUnit: what the generic IOMMU layer (dmakit/iommu.h: I/O page tables, the I/O address
// allocator, IommuDomain and its DmaOp) needs from one hardware IOMMU, and what each IOMMU driver
// (SMMUv3, Intel VT-d, the RISC-V IOMMU) implements. Zircon's dev/iommu and Linux's iommu_ops draw
// the same line: the driver owns the hardware's queues, context tables and invalidation; the page
// tables it walks are built by common code in the format the driver describes.
//
// Scheme. Every supported IOMMU walks a radix tree of 4 KiB tables holding 512 eight-byte entries,
// 9 bits of the I/O virtual address (IOVA) per level, with 4 KiB leaves. Only the bits of an entry
// differ; IoPageTableFormat describes them as four small functions, so one walker builds the
// tables of all three. The driver points a device's context (stream table entry, context entry,
// device context) at a domain's root table and removes cached translations when asked.
//
// Device ids: the requester id the IOMMU sees, as the firmware describes it (PCI
// bus << 8 | device << 3 | function, after the device tree's iommu-map or the DMAR table's device
// scope has been applied).
#pragma once

#include "dmakit/support/addr.h"
#include "dmakit/support/result.h"
#include "dmakit/support/types.h"

// What a device may do through one mapping (bit set).
enum IommuPerm : uint8_t {
  kIommuRead = 1,   // the device may read the page (DMA to the device: kToDevice)
  kIommuWrite = 2,  // the device may write the page (kFromDevice)
};

// The bits of one hardware's I/O page-table entries. Every table is one 4 KiB page of 512
// little-endian 64-bit entries; an IOVA has 12 + 9 * levels significant bits.
struct IoPageTableFormat {
  // Levels of the walk from the root table to the 4 KiB leaves: 3 (39-bit IOVAs) or 4 (48-bit).
  uint8_t levels = 4;
  // Whether the IOMMU's table walker snoops the CPU caches. False: the generic code cleans every
  // entry it writes (DmaOp::flush) before it asks for an invalidation.
  bool coherent_walk = true;
  // The entry pointing at the next-level table at physical address `table` (4 KiB aligned).
  uint64_t (*table_entry)(uint64_t table) = nullptr;
  // The leaf entry for the 4 KiB page at physical address `page` with IommuPerm bits `perm` (never
  // 0; a hardware without write-only entries grants read with write).
  uint64_t (*page_entry)(uint64_t page, unsigned perm) = nullptr;
  // Whether `entry` is valid (points at a table or a page).
  bool (*entry_valid)(uint64_t entry) = nullptr;
  // The physical address a valid entry points at.
  uint64_t (*entry_addr)(uint64_t entry) = nullptr;
};

// One translation fault, as the driver read it from its event or fault queue.
struct IommuFault {
  uint32_t device_id = 0;   // requester id of the device that faulted
  uint64_t iova = 0;        // the I/O virtual address it tried to reach
  bool write = false;       // a write (true) or a read
  const char* reason = "";  // static text: "not mapped", "permission", "no context", ...
};

// One hardware IOMMU unit. Implemented by each driver; used by IommuDomain. The driver object
// lives as long as the kernel (drivers are typically constinit statics) and is never destroyed
// through this interface.
class IommuUnit {
 public:
  // A short name for reports: "smmuv3", "vt-d", "riscv-iommu".
  virtual const char* name() const = 0;

  // The format of the I/O page tables this unit walks for its domains.
  virtual const IoPageTableFormat& format() const = 0;

  // Significant IOVA bits of a domain (at most 12 + 9 * format().levels): the I/O address space
  // is [0, 2^iova_bits). Any context.
  virtual uint8_t iova_bits() const = 0;

  // Whether this unit translates the DMA of device `device_id`. Any context.
  virtual bool covers(uint32_t device_id) const = 0;

  // Lets device `device_id` translate through the page tables rooted at physical `root` as domain
  // `domain` (the hardware's ASID / domain id / GSCID, 1 to max_domains()); from then on every
  // access outside the tables faults. Replaces a previous attachment. Thread only.
  // Errors: kInvalidArgument (a device this unit does not cover, a domain out of range),
  // kNoMemory (no memory for the unit's context structures), kTimedOut / kIoError (the hardware
  // did not complete the update).
  virtual Result<void> attach(uint32_t device_id, uint32_t domain, PhysAddr root) = 0;

  // Blocks every access of device `device_id` (its context aborts or faults), and removes the
  // unit's cached context and translations for it. Thread only.
  virtual void detach(uint32_t device_id) = 0;

  // Removes every cached translation of [iova, iova + size) in `domain` and returns when the
  // hardware acknowledged it (strict: no access through an old entry is possible afterwards).
  // size 0: the whole domain. Any context.
  virtual void invalidate(uint32_t domain, uint64_t iova, uint64_t size) = 0;

  // The number of domain ids, usable as 1 to max_domains(). Any context.
  virtual uint32_t max_domains() const = 0;

  // Whether the unit may cache "not present" results of its walks (VT-d's caching mode, which
  // QEMU's intel-iommu offers as caching-mode=on and virtualised IOMMUs use), so that an entry made
  // present must be invalidated too before a device may use it. IommuDomain then invalidates each
  // range it maps, as it does each range it unmaps. The default: no. Any context.
  virtual bool invalidate_on_map() const { return false; }

  // Turns translation off for good, as before the driver enabled it (devices reach physical
  // memory directly again), after a failed set-up of the generic layer; returns false when the
  // driver cannot (its devices then stay blocked). The default cannot. Thread only.
  virtual bool disable() { return false; }

  // Reads the faults the hardware recorded since the last call, calls `sink` once for each, and
  // returns how many there were. Any context (the kernel may call it from the unit's fault
  // interrupt, or poll it).
  virtual size_t drain_faults(void (*sink)(void* ctx, const IommuFault& fault), void* ctx) = 0;

 protected:
  constexpr IommuUnit() = default;
  ~IommuUnit() = default;
  IommuUnit(const IommuUnit&) = default;
  IommuUnit& operator=(const IommuUnit&) = default;
};
