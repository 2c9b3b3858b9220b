#include "arch/host/cache_model.h"

// Store tracking reads and writes the saved registers of the interrupted thread (the trap flag,
// and the string registers of a rep movs / rep stos it performs).
#if !defined(__x86_64__) || !defined(__linux__)
#error "the host cache model tracks CPU stores with the x86-64 trap flag under Linux"
#endif

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "dmakit/support/assert.h"

namespace {

uint8_t* zero_pages(size_t size) {
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  KASSERT(m != MAP_FAILED, "mmap for the cache model failed");
  return static_cast<uint8_t*>(m);
}

constexpr size_t kPage = CacheModel::kPageSize;
constexpr greg_t kTrapFlag = 0x100;       // EFLAGS.TF: trap after the next instruction.
constexpr greg_t kDirectionFlag = 0x400;  // EFLAGS.DF: string instructions go downwards.

// The model's reads of the CPU view act for the hardware (a write-back, a snoop), which runs
// alongside the CPUs' stores: ThreadSanitizer must not take them for the program's own accesses.
// So they are loads it does not instrument, volatile so that no memcpy / bcmp call (which it
// intercepts) replaces them. Word by word where the length allows (lines always do).
[[clang::no_sanitize("thread")]] void copy_from_cpu(uint8_t* dst, const uint8_t* cpu, size_t n) {
  size_t i = 0;
  if ((reinterpret_cast<uintptr_t>(cpu) | reinterpret_cast<uintptr_t>(dst)) % 8 == 0) {
    for (; i + 8 <= n; i += 8) {
      *reinterpret_cast<uint64_t*>(dst + i) = *reinterpret_cast<const volatile uint64_t*>(cpu + i);
    }
  }
  for (; i < n; ++i) dst[i] = static_cast<const volatile uint8_t*>(cpu)[i];
}

[[clang::no_sanitize("thread")]] bool cpu_differs(const uint8_t* cpu, const uint8_t* other,
                                                  size_t n) {
  size_t i = 0;
  if ((reinterpret_cast<uintptr_t>(cpu) | reinterpret_cast<uintptr_t>(other)) % 8 == 0) {
    for (; i + 8 <= n; i += 8) {
      if (*reinterpret_cast<const volatile uint64_t*>(cpu + i) !=
          *reinterpret_cast<const uint64_t*>(other + i)) {
        return true;
      }
    }
  }
  for (; i < n; ++i) {
    if (static_cast<const volatile uint8_t*>(cpu)[i] != other[i]) return true;
  }
  return false;
}

// A tiny spinlock the signal handlers may take: held only around an mprotect and a state update,
// never while storing to tracked memory, so a handler never waits for its own thread.
class ProtLock {
 public:
  void lock() {
    while (flag_.test_and_set(std::memory_order_acquire)) {
    }
  }
  void unlock() { flag_.clear(std::memory_order_release); }

 private:
  std::atomic_flag flag_ = ATOMIC_FLAG_INIT;
};

}  // namespace

// The signal side of store tracking (the scheme is in cache_model.h). Everything a handler touches
// is fixed-size and lock-free, or the ProtLock above: handlers run on any thread, between any two
// instructions, and must neither allocate nor block on the model's mutex.
struct StoreTracker {
  static constexpr int kMaxOpen = 8;  // Pages one instruction may open (a store spans at most 2).

  static std::atomic<CacheModel*> models[CacheModel::kMaxTrackedModels];
  static std::atomic<int> mem_fd;  // /proc/self/mem, for the model's own writes.
  static ProtLock prot_lock;       // Serialises a page's protection with its kProtected bit.
  static struct sigaction prev_segv;
  static struct sigaction prev_trap;

  // What the current thread opened for the instruction it is single-stepping.
  struct Step {
    bool stepping;
    int n;
    CacheModel* model[kMaxOpen];
    size_t line[kMaxOpen];   // Offset of the faulting byte.
    size_t width[kMaxOpen];  // Bytes the store writes from there, 0: unknown.
    // Unknown width: the bytes after the faulting line, compared once the store is done.
    size_t after_off[kMaxOpen];
    size_t after_len[kMaxOpen];
    uint8_t after[kMaxOpen][64];
  };

  static void install();
  static void reopen_mem_fd();
  static void add(CacheModel* m);
  static void remove(CacheModel* m);
  static CacheModel* model_at(uintptr_t a);
  static void chain(const struct sigaction& prev, int sig, siginfo_t* info, void* ctx);
  static void on_segv(int sig, siginfo_t* info, void* ctx);
  static void on_trap(int sig, siginfo_t* info, void* ctx);
  static bool perform_rep_store(CacheModel* m, ucontext_t* uc);
  static bool write_mem(uintptr_t dst, const void* src, size_t len);
  static void open_page(CacheModel* m, size_t page_off);
  static void open_page_if_all_dirty(CacheModel* m, size_t page_off);
  static void close_page(CacheModel* m, size_t page_off);
};

std::atomic<CacheModel*> StoreTracker::models[CacheModel::kMaxTrackedModels];
std::atomic<int> StoreTracker::mem_fd{-1};
ProtLock StoreTracker::prot_lock;
struct sigaction StoreTracker::prev_segv;
struct sigaction StoreTracker::prev_trap;

namespace {
// Zero-initialised, no constructor: a signal handler may touch it on any thread.
constinit thread_local StoreTracker::Step t_step{};
std::once_flag g_install_once;
std::mutex g_registry_mutex;  // Adding and removing models (not used by the handlers).
}  // namespace

void StoreTracker::reopen_mem_fd() {
  // A forked child (a death test) must not write its parent's memory through the parent's fd.
  int old = mem_fd.exchange(open("/proc/self/mem", O_RDWR | O_CLOEXEC));
  if (old >= 0) close(old);
}

void StoreTracker::install() {
  reopen_mem_fd();
  KASSERT(mem_fd.load() >= 0, "cannot open /proc/self/mem for the cache model");
  KASSERT(pthread_atfork(nullptr, nullptr, &StoreTracker::reopen_mem_fd) == 0, "pthread_atfork");
  struct sigaction sa{};
  sa.sa_sigaction = &StoreTracker::on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  KASSERT(sigaction(SIGSEGV, &sa, &prev_segv) == 0, "sigaction(SIGSEGV)");
  sa.sa_sigaction = &StoreTracker::on_trap;
  KASSERT(sigaction(SIGTRAP, &sa, &prev_trap) == 0, "sigaction(SIGTRAP)");
}

void StoreTracker::add(CacheModel* m) {
  std::call_once(g_install_once, &StoreTracker::install);
  std::lock_guard<std::mutex> g(g_registry_mutex);
  for (auto& slot : models) {
    if (slot.load() == nullptr) {
      slot.store(m);
      return;
    }
  }
  KPANIC("more than CacheModel::kMaxTrackedModels store-tracking cache models at once");
}

void StoreTracker::remove(CacheModel* m) {
  std::lock_guard<std::mutex> g(g_registry_mutex);
  for (auto& slot : models) {
    if (slot.load() == m) slot.store(nullptr);
  }
}

CacheModel* StoreTracker::model_at(uintptr_t a) {
  for (auto& slot : models) {
    CacheModel* m = slot.load(std::memory_order_acquire);
    if (m != nullptr && a - reinterpret_cast<uintptr_t>(m->cpu_) < m->size_) return m;
  }
  return nullptr;
}

void StoreTracker::chain(const struct sigaction& prev, int sig, siginfo_t* info, void* ctx) {
  if ((prev.sa_flags & SA_SIGINFO) != 0) {
    if (prev.sa_sigaction != nullptr) prev.sa_sigaction(sig, info, ctx);
    return;
  }
  if (prev.sa_handler == SIG_IGN) return;
  if (prev.sa_handler == SIG_DFL) {
    // The default action: a fault repeats when the instruction restarts; a trap does not, so it
    // is raised again (delivered when this handler returns).
    struct sigaction dfl{};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, nullptr);
    if (sig == SIGTRAP) raise(sig);
    return;
  }
  prev.sa_handler(sig);
}

bool StoreTracker::write_mem(uintptr_t dst, const void* src, size_t len) {
  const int fd = mem_fd.load(std::memory_order_relaxed);
  const auto* p = static_cast<const uint8_t*>(src);
  while (len > 0) {
    ssize_t n = pwrite(fd, p, len, static_cast<off_t>(dst));
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    p += n;
    dst += static_cast<size_t>(n);
    len -= static_cast<size_t>(n);
  }
  return true;
}

void StoreTracker::open_page(CacheModel* m, size_t page_off) {
  prot_lock.lock();
  m->protect(page_off, kPage, true);
  m->page_state_[page_off / kPage].fetch_and(static_cast<uint8_t>(~CacheModel::kProtected));
  prot_lock.unlock();
}

// Checked under the lock: a clean by another thread either ran before (a clean line is seen, the
// page stays protected) or re-protects the page after this (CacheModel::track_pages).
void StoreTracker::open_page_if_all_dirty(CacheModel* m, size_t page_off) {
  prot_lock.lock();
  if (!m->page_has_clean_line(page_off)) {
    m->protect(page_off, kPage, true);
    m->page_state_[page_off / kPage].fetch_and(static_cast<uint8_t>(~CacheModel::kProtected));
  }
  prot_lock.unlock();
}

void StoreTracker::close_page(CacheModel* m, size_t page_off) {
  prot_lock.lock();
  std::atomic<uint8_t>& st = m->page_state_[page_off / kPage];
  const uint8_t s = st.load();
  // A page whose lines are all dirty needs no protection until its next maintenance.
  if ((s & CacheModel::kTracked) != 0 &&
      (s & (CacheModel::kUncachedPage | CacheModel::kProtected)) == 0 &&
      m->page_has_clean_line(page_off)) {
    m->protect(page_off, kPage, false);
    st.fetch_or(CacheModel::kProtected);
  }
  prot_lock.unlock();
}

// How many bytes the store instruction at `ip` writes, for the stores simulated RAM sees in
// practice (the library's and the compiler's moves: mov, SSE/AVX/AVX-512 vector and
// non-temporal stores); 0 for anything else. The SIGTRAP handler then compares the bytes after
// the faulting line instead, which catches a changed value but not a rewritten one.
static size_t store_width(const uint8_t* ip) {
  bool opsize16 = false;
  size_t i = 0;
  for (; i < 14; ++i) {  // Legacy prefixes.
    const uint8_t b = ip[i];
    if (b == 0x66) {
      opsize16 = true;
    } else if (b != 0xF2 && b != 0xF3 && b != 0x2E && b != 0x3E && b != 0x26 && b != 0x36 &&
               b != 0x64 && b != 0x65 && b != 0x67 && b != 0xF0) {
      break;
    }
  }
  bool w = false;
  if ((ip[i] & 0xF0) == 0x40) {  // REX
    w = (ip[i] & 0x08) != 0;
    ++i;
  }
  const uint8_t b0 = ip[i];
  // VEX (C5: 2 bytes, C4: 3 bytes) and EVEX (62: 4 bytes); in 64-bit mode always these.
  if (b0 == 0xC5 || b0 == 0xC4 || b0 == 0x62) {
    size_t map = 1;
    size_t vector = 16;
    size_t op_at = i + 2;
    if (b0 == 0xC5) {
      vector = (ip[i + 1] & 0x04) != 0 ? 32 : 16;
    } else if (b0 == 0xC4) {
      map = ip[i + 1] & 0x1F;
      w = (ip[i + 2] & 0x80) != 0;
      vector = (ip[i + 2] & 0x04) != 0 ? 32 : 16;
      op_at = i + 3;
    } else {
      map = ip[i + 1] & 0x07;
      w = (ip[i + 2] & 0x80) != 0;
      vector = size_t{16} << ((ip[i + 3] >> 5) & 3);
      op_at = i + 4;
    }
    if (map != 1) return 0;
    switch (ip[op_at]) {
      case 0x11:  // vmovups/vmovupd/vmovss/vmovsd store (scalar forms with F3/F2: rare here).
      case 0x29:  // vmovaps/vmovapd
      case 0x7F:  // vmovdqa/vmovdqu (and the EVEX 8/16/32/64 forms)
      case 0xE7:  // vmovntdq
      case 0x2B:  // vmovntps/pd
        return vector;
      case 0xD6:  // vmovq m64, xmm
        return 8;
      case 0x7E:  // vmovd/vmovq r/m, xmm
        return w ? 8 : 4;
      default:
        return 0;
    }
  }
  size_t gpr = 4;
  if (w) {
    gpr = 8;
  } else if (opsize16) {
    gpr = 2;
  }
  switch (b0) {
    case 0x88:  // mov r/m8, r8
    case 0xC6:  // mov r/m8, imm8
      return 1;
    case 0x89:  // mov r/m, r
    case 0xC7:  // mov r/m, imm
      return gpr;
    case 0x0F:
      switch (ip[i + 1]) {
        case 0x11:  // movups/movupd (movss/movsd with F3/F2: rare here)
        case 0x29:  // movaps/movapd
        case 0x7F:  // movdqa/movdqu
        case 0xE7:  // movntdq
        case 0x2B:  // movntps/pd
          return 16;
        case 0xD6:  // movq m64, xmm
        case 0x13:  // movlps/movlpd
        case 0x17:  // movhps/movhpd
          return 8;
        case 0x7E:  // movd/movq r/m, xmm
        case 0xC3:  // movnti
          return w ? 8 : 4;
        default:
          return 0;
      }
    default:
      return 0;
  }
}

// `rep movs` / `rep stos` upwards, wholly inside the model's region: single-stepping would trap
// after every element (glibc's memcpy and memset use them from a few KiB on), so the handler
// performs the instruction itself, through /proc/self/mem, and marks every destination line
// dirty. Anything else (other prefixes, downwards, overlapping, partly outside) is stepped.
bool StoreTracker::perform_rep_store(CacheModel* m, ucontext_t* uc) {
  greg_t* r = uc->uc_mcontext.gregs;
  if ((r[REG_EFL] & kDirectionFlag) != 0) return false;
  // NOLINTNEXTLINE(performance-no-int-to-ptr): the saved instruction pointer.
  const auto* ip = reinterpret_cast<const uint8_t*>(r[REG_RIP]);
  bool rep = false;
  bool opsize16 = false;
  bool rexw = false;
  size_t n = 0;
  for (; n < 4; ++n) {
    if (ip[n] == 0xF3) {
      rep = true;
    } else if (ip[n] == 0x66) {
      opsize16 = true;
    } else {
      break;
    }
  }
  if ((ip[n] & 0xF0) == 0x40) {
    rexw = (ip[n] & 0x08) != 0;
    ++n;
  }
  const uint8_t opcode = ip[n];
  if (!rep || (opcode != 0xA4 && opcode != 0xA5 && opcode != 0xAA && opcode != 0xAB)) return false;
  const bool movs = opcode == 0xA4 || opcode == 0xA5;
  size_t elem = 4;
  if (opcode == 0xA4 || opcode == 0xAA) {
    elem = 1;
  } else if (rexw) {
    elem = 8;
  } else if (opsize16) {
    elem = 2;
  }
  const auto count = static_cast<size_t>(r[REG_RCX]);
  const auto dst = static_cast<uintptr_t>(r[REG_RDI]);
  const auto src = static_cast<uintptr_t>(r[REG_RSI]);
  const auto base = reinterpret_cast<uintptr_t>(m->cpu_);
  if (count == 0 || count > m->size_ / elem) return false;
  const size_t bytes = count * elem;
  if (dst - base >= m->size_ || bytes > m->size_ - (dst - base)) return false;
  if (movs && dst > src && dst - src < bytes) return false;  // Overlap that forwards data.
  const size_t off = dst - base;
  const size_t first_line = off & ~(m->line_ - 1);
  // Dirty before the write (a concurrent clean sees a store under way) and after (a clean that
  // ran in between cleared what this store redirtied).
  for (size_t l = first_line; l < off + bytes; l += m->line_) m->set_dirty_bit(l);
  bool ok;
  if (movs) {
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the saved source register.
    ok = write_mem(dst, reinterpret_cast<const void*>(src), bytes);
  } else {
    uint8_t pattern[512];
    const auto value = static_cast<uint64_t>(r[REG_RAX]);
    for (size_t i = 0; i < sizeof(pattern); ++i) {
      pattern[i] = static_cast<uint8_t>(value >> (8 * (i % elem)));
    }
    ok = true;
    for (size_t done = 0; done < bytes && ok; done += sizeof(pattern)) {
      ok = write_mem(dst + done, pattern, std::min(sizeof(pattern), bytes - done));
    }
  }
  if (!ok) return false;  // Stepped instead; the lines are dirty either way.
  for (size_t l = first_line; l < off + bytes; l += m->line_) m->set_dirty_bit(l);
  const uintptr_t dst_end = dst + bytes;
  const uintptr_t src_end = src + bytes;
  r[REG_RDI] = static_cast<greg_t>(dst_end);
  if (movs) r[REG_RSI] = static_cast<greg_t>(src_end);
  r[REG_RCX] = 0;
  const uintptr_t next_ip = reinterpret_cast<uintptr_t>(ip) + n + 1;
  r[REG_RIP] = static_cast<greg_t>(next_ip);
  // Pages now wholly dirty need no protection: later stores to them cost nothing.
  for (size_t p = off & ~(kPage - 1); p < off + bytes; p += kPage) open_page_if_all_dirty(m, p);
  return true;
}

void StoreTracker::on_segv(int sig, siginfo_t* info, void* ctx) {
  const int saved_errno = errno;
  auto* uc = static_cast<ucontext_t*>(ctx);
  const auto a = reinterpret_cast<uintptr_t>(info->si_addr);
  CacheModel* m = info->si_code == SEGV_ACCERR ? model_at(a) : nullptr;
  if (m == nullptr) {
    errno = saved_errno;
    chain(prev_segv, sig, info, ctx);
    return;
  }
  m->caught_stores_.fetch_add(1, std::memory_order_relaxed);
  if (!perform_rep_store(m, uc)) {
    const size_t off = a - reinterpret_cast<uintptr_t>(m->cpu_);
    const size_t page = off & ~(kPage - 1);
    // Within this page; an access that began on the page before may end here sooner than that
    // (then the width is an upper bound, at most one line further than the truth).
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the saved instruction pointer.
    const auto* fault_ip = reinterpret_cast<const uint8_t*>(uc->uc_mcontext.gregs[REG_RIP]);
    const size_t width = std::min(store_width(fault_ip), page + kPage - off);
    m->mark_stored(off, width == 0 ? 1 : width);
    if (t_step.n < kMaxOpen) {
      const int k = t_step.n++;
      t_step.model[k] = m;
      t_step.line[k] = off;
      t_step.width[k] = width;
      t_step.after_len[k] = 0;
      if (width == 0) {
        // The next 64 bytes after the faulting line, within the page: how far a store of an
        // unknown kind can reach.
        const size_t from = (off | (m->line_ - 1)) + 1;
        const size_t len = from < page + kPage ? std::min<size_t>(64, page + kPage - from) : 0;
        t_step.after_off[k] = from;
        t_step.after_len[k] = len;
        copy_from_cpu(t_step.after[k], m->cpu_ + from, len);
      }
    }
    open_page(m, page);
    // Past kMaxOpen the page stays writable until its next maintenance protects it again.
    t_step.stepping = true;
    uc->uc_mcontext.gregs[REG_EFL] |= kTrapFlag;
  }
  errno = saved_errno;
}

void StoreTracker::on_trap(int sig, siginfo_t* info, void* ctx) {
  if (!t_step.stepping) {
    chain(prev_trap, sig, info, ctx);
    return;
  }
  const int saved_errno = errno;
  auto* uc = static_cast<ucontext_t*>(ctx);
  uc->uc_mcontext.gregs[REG_EFL] &= ~kTrapFlag;
  for (int i = 0; i < t_step.n; ++i) {
    CacheModel* m = t_step.model[i];
    // Again, now that the store happened: a clean by another thread since the fault must not
    // leave this line looking clean.
    const size_t w = t_step.width[i];
    m->mark_stored(t_step.line[i], w == 0 ? 1 : w);
    for (size_t j = 0; j < t_step.after_len[i]; j += m->line_) {
      const size_t len = std::min(m->line_, t_step.after_len[i] - j);
      if (cpu_differs(m->cpu_ + t_step.after_off[i] + j, &t_step.after[i][j], len)) {
        m->set_dirty_bit(t_step.after_off[i] + j);
      }
    }
    close_page(m, t_step.line[i] & ~(kPage - 1));
  }
  t_step.n = 0;
  t_step.stepping = false;
  errno = saved_errno;
}

// ---- CacheModel ----

CacheModel::CacheModel(uint8_t* cpu, size_t size, size_t line, Tracking tracking)
    : cpu_(cpu),
      size_(size),
      line_(line),
      tracking_(tracking),
      memory_(zero_pages(size)),
      synced_(zero_pages(size)) {
  KASSERT(line != 0 && (line & (line - 1)) == 0, "line size must be a power of two");
  KASSERT(size % line == 0, "region must be whole lines");
  if (tracking_ == Tracking::kStores) {
    KASSERT(reinterpret_cast<uintptr_t>(cpu) % kPage == 0 && size % kPage == 0,
            "store tracking needs whole pages");
    KASSERT(line <= kPage, "store tracking: lines larger than a page");
    const size_t lines = size / line;
    dirty_bits_ = reinterpret_cast<std::atomic<uint64_t>*>(zero_pages((lines + 63) / 64 * 8));
    page_state_ = reinterpret_cast<std::atomic<uint8_t>*>(zero_pages(size / kPage));
    StoreTracker::add(this);
  }
}

CacheModel::~CacheModel() {
  if (tracking_ == Tracking::kStores) {
    StoreTracker::remove(this);
    protect(0, size_, true);
    munmap(dirty_bits_, (size_ / line_ + 63) / 64 * 8);
    munmap(page_state_, size_ / kPage);
  }
  munmap(memory_, size_);
  munmap(synced_, size_);
}

void CacheModel::protect(size_t off, size_t len, bool writable_too) const {
  const int prot = writable_too ? PROT_READ | PROT_WRITE : PROT_READ;
  const int r = mprotect(cpu_ + off, len, prot);
  KASSERT(r == 0, "cache model: mprotect failed");
}

void CacheModel::set_dirty_bit(size_t off) {
  const size_t i = off / line_;
  dirty_bits_[i / 64].fetch_or(uint64_t{1} << (i % 64));
}

void CacheModel::mark_stored(size_t off, size_t len) {
  for (size_t l = off & ~(line_ - 1); l < off + len; l += line_) set_dirty_bit(l);
}

bool CacheModel::clear_dirty_bit(size_t off) {
  const size_t i = off / line_;
  const uint64_t bit = uint64_t{1} << (i % 64);
  return (dirty_bits_[i / 64].fetch_and(~bit) & bit) != 0;
}

bool CacheModel::dirty_bit(size_t off) const {
  const size_t i = off / line_;
  return (dirty_bits_[i / 64].load() >> (i % 64) & 1) != 0;
}

bool CacheModel::page_has_clean_line(size_t page_off) const {
  for (size_t l = page_off; l < page_off + kPage; l += line_) {
    if (!dirty_bit(l)) return true;
  }
  return false;
}

// Around maintenance of [off, off + len): every cacheable page it touches is tracked from now on
// and write-protected (its lines are about to be clean). Before: a store racing with the
// maintenance faults and is recorded, rather than slipping in unseen. After: a handler that
// found the page wholly dirty and opened it while lines were being cleaned is undone.
void CacheModel::track_pages(size_t off, size_t len) {
  if (tracking_ != Tracking::kStores || len == 0) return;
  const size_t first = off & ~(kPage - 1);
  const size_t end = off + len;
  size_t run = 0;  // Pages [run_start, p) to protect in one call.
  size_t run_start = 0;
  StoreTracker::prot_lock.lock();
  for (size_t p = first; p < end; p += kPage) {
    std::atomic<uint8_t>& st = page_state_[p / kPage];
    uint8_t s = st.load();
    if ((s & kTracked) == 0 && (s & kUncachedPage) == 0) {
      // Stores before tracking began are known by value only: freeze what they changed.
      for (size_t l = p; l < p + kPage; l += line_) {
        if (cpu_differs(cpu_ + l, synced_ + l, line_)) set_dirty_bit(l);
      }
      st.fetch_or(kTracked);
      s |= kTracked;
    }
    const bool want = (s & (kUncachedPage | kProtected)) == 0;
    if (want) {
      if (run == 0) run_start = p;
      ++run;
      st.fetch_or(kProtected);
    }
    if (run != 0 && (!want || p + kPage >= end)) {
      protect(run_start, run * kPage, false);
      run = 0;
    }
  }
  StoreTracker::prot_lock.unlock();
}

void CacheModel::write_cpu(size_t off, const void* src, size_t len) {
  if (tracking_ != Tracking::kStores) {
    std::memcpy(cpu_ + off, src, len);
    return;
  }
  const bool ok = StoreTracker::write_mem(reinterpret_cast<uintptr_t>(cpu_ + off), src, len);
  KASSERT(ok, "cache model: write through /proc/self/mem failed");
}

bool CacheModel::dirty_locked(size_t l) const {
  if (tracking_ == Tracking::kStores && dirty_bit(l)) return true;
  return cpu_differs(cpu_ + l, synced_ + l, line_);
}

template <typename F>
void CacheModel::for_lines(size_t off, size_t len, F f) {
  if (len == 0) return;
  KASSERT(off < size_ && len <= size_ - off, "cache operation outside the modelled memory");
  size_t first = off & ~(line_ - 1);
  size_t end = off + len;
  for (size_t l = first; l < end; l += line_) f(l);
}

void CacheModel::clean_line(size_t l) {
  if (uncached_locked(l)) {
    // Only a stale line can be in the cache: written back over memory (which the CPU reads).
    auto it = stale_.find(l);
    if (it != stale_.end()) {
      write_cpu(l, it->second.data(), line_);
      std::memcpy(memory_ + l, it->second.data(), line_);
      std::memcpy(synced_ + l, it->second.data(), line_);
      stale_.erase(it);
    }
    return;
  }
  // The bit is taken before the copy: a store racing with this clean either is in the copy or
  // sets the bit again.
  const bool stored = tracking_ == Tracking::kStores && clear_dirty_bit(l);
  if (stored || cpu_differs(cpu_ + l, synced_ + l, line_)) {
    copy_from_cpu(memory_ + l, cpu_ + l, line_);
  }
  copy_from_cpu(synced_ + l, cpu_ + l, line_);
}

// Invalidates (after cleaning, if clean_first) every line of [off, off + len): the CPU view takes
// memory's bytes, written in runs of changed lines (each a write through /proc/self/mem).
void CacheModel::invalidate_lines(size_t off, size_t len, bool clean_first) {
  size_t run_start = 0;
  size_t run_len = 0;
  auto write_run = [&]() TA_NO_THREAD_SAFETY_ANALYSIS {
    if (run_len != 0) write_cpu(run_start, memory_ + run_start, run_len);
    run_len = 0;
  };
  for_lines(off, len, [&](size_t l) TA_NO_THREAD_SAFETY_ANALYSIS {
    if (clean_first) {
      clean_line(l);
      ++counters_.clean_invalidates;
    } else {
      ++counters_.invalidates;
    }
    if (uncached_locked(l)) {
      stale_.erase(l);  // Memory, which the CPU reads, is untouched.
      write_run();
      return;
    }
    if (tracking_ == Tracking::kStores) clear_dirty_bit(l);
    if (cpu_differs(cpu_ + l, memory_ + l, line_)) {
      if (run_len == 0 || run_start + run_len != l) {
        write_run();
        run_start = l;
      }
      run_len += line_;
    }
    std::memcpy(synced_ + l, memory_ + l, line_);
  });
  write_run();
}

void CacheModel::clean(size_t off, size_t len) {
  support::Guard<ModelMutex> g(&mu_);
  track_pages(off, len);
  for_lines(off, len, [this](size_t l) TA_NO_THREAD_SAFETY_ANALYSIS {
    clean_line(l);
    ++counters_.cleans;
  });
  track_pages(off, len);
}

void CacheModel::invalidate(size_t off, size_t len) {
  support::Guard<ModelMutex> g(&mu_);
  track_pages(off, len);
  invalidate_lines(off, len, false);
  track_pages(off, len);
}

void CacheModel::clean_invalidate(size_t off, size_t len) {
  support::Guard<ModelMutex> g(&mu_);
  track_pages(off, len);
  invalidate_lines(off, len, true);
  track_pages(off, len);
}

void CacheModel::evict_all() {
  support::Guard<ModelMutex> g(&mu_);
  track_pages(0, size_);
  for (size_t l = 0; l < size_; l += line_) clean_line(l);
  track_pages(0, size_);
}

void CacheModel::device_read(size_t off, void* dst, size_t len, bool coherent) const {
  if (len == 0) return;
  KASSERT(off < size_ && len <= size_ - off, "device read outside the modelled memory");
  support::Guard<ModelMutex> g(&mu_);
  // Page by page: an uncached page's memory is what the CPU wrote (cpu_).
  auto* out = static_cast<uint8_t*>(dst);
  while (len > 0) {
    size_t n = std::min(len, kPageSize - (off % kPageSize));
    if (coherent || uncached_locked(off)) {
      copy_from_cpu(out, cpu_ + off, n);  // A snoop, or memory the CPU writes uncached.
    } else {
      std::memcpy(out, memory_ + off, n);
    }
    out += n;
    off += n;
    len -= n;
  }
}

void CacheModel::device_write(size_t off, const void* src, size_t len, bool coherent) {
  if (len == 0) return;
  KASSERT(off < size_ && len <= size_ - off, "device write outside the modelled memory");
  support::Guard<ModelMutex> g(&mu_);
  const auto* in = static_cast<const uint8_t*>(src);
  while (len > 0) {
    size_t n = std::min(len, kPageSize - (off % kPageSize));
    std::memcpy(memory_ + off, in, n);
    if (coherent || uncached_locked(off)) {
      // A snooping write updates (or invalidates) the cached copy, and an uncached page has none:
      // the CPU sees it at once.
      write_cpu(off, in, n);
      std::memcpy(synced_ + off, in, n);
    }
    in += n;
    off += n;
    len -= n;
  }
}

void CacheModel::set_uncached(size_t off, size_t len, bool make_uncached) {
  KASSERT(off % kPageSize == 0 && len % kPageSize == 0, "set_uncached: not whole pages");
  KASSERT(line_ <= kPageSize, "set_uncached: lines larger than a page");
  KASSERT(off < size_ && len <= size_ - off, "set_uncached outside the modelled memory");
  support::Guard<ModelMutex> g(&mu_);
  for (size_t page = off; page < off + len; page += kPageSize) {
    if (uncached_locked(page) == make_uncached) continue;
    if (make_uncached && tracking_ == Tracking::kStores) {
      // The CPU's stores now go to memory: nothing to track, nothing to protect.
      StoreTracker::prot_lock.lock();
      protect(page, kPageSize, true);
      page_state_[page / kPageSize].store(kUncachedPage);
      StoreTracker::prot_lock.unlock();
    }
    for (size_t l = page; l < page + kPageSize; l += line_) {
      if (make_uncached) {
        // A dirty line stays in the cache; the CPU now reads memory.
        if (dirty_locked(l)) {
          std::vector<uint8_t>& bytes = stale_[l];
          bytes.resize(line_);
          copy_from_cpu(bytes.data(), cpu_ + l, line_);
        }
        write_cpu(l, memory_ + l, line_);
        std::memcpy(synced_ + l, memory_ + l, line_);
        if (tracking_ == Tracking::kStores) clear_dirty_bit(l);
      } else {
        // What was written uncached is memory; a stale line is the CPU's view again (dirty).
        copy_from_cpu(memory_ + l, cpu_ + l, line_);
        copy_from_cpu(synced_ + l, cpu_ + l, line_);
        auto it = stale_.find(l);
        if (it != stale_.end()) {
          write_cpu(l, it->second.data(), line_);
          if (tracking_ == Tracking::kStores) set_dirty_bit(l);
          stale_.erase(it);
        }
      }
    }
    if (make_uncached) {
      uncached_pages_.insert(page / kPageSize);
    } else {
      uncached_pages_.erase(page / kPageSize);
      if (tracking_ == Tracking::kStores) {
        // Cacheable again, every line synchronised: tracked from here on.
        page_state_[page / kPageSize].store(kTracked);
        track_pages(page, kPageSize);
      }
    }
  }
}

bool CacheModel::uncached(size_t off) const {
  support::Guard<ModelMutex> g(&mu_);
  return uncached_locked(off);
}

size_t CacheModel::uncached_pages() const {
  support::Guard<ModelMutex> g(&mu_);
  return uncached_pages_.size();
}

size_t CacheModel::stale_lines() const {
  support::Guard<ModelMutex> g(&mu_);
  return stale_.size();
}

bool CacheModel::line_dirty(size_t off) const {
  KASSERT(off < size_, "line_dirty outside the modelled memory");
  support::Guard<ModelMutex> g(&mu_);
  if (uncached_locked(off)) return stale_.contains(off & ~(line_ - 1));
  return dirty_locked(off & ~(line_ - 1));
}

CacheModel::Counters CacheModel::counters() const {
  support::Guard<ModelMutex> g(&mu_);
  return counters_;
}

void CacheModel::reset_counters() {
  support::Guard<ModelMutex> g(&mu_);
  counters_ = {};
}
