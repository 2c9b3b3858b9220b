// The formatting engine behind kprintf and ksnprintf: one pass over the format, each conversion
// rendered into a small stack buffer and then padded into the sink. Cost: linear in the output.
//
// Console output is serialised by one lock, taken with interrupts masked for a whole kprintf or
// kputs, so lines from different CPUs do not interleave. The lock remembers its owner CPU: a
// kprintf from a trap taken while the same CPU prints (a fault inside the formatting) goes ahead
// instead of spinning on itself. Once a panic is in progress a CPU waits at most kPanicWaitNs for
// the lock and then prints anyway: the panicking CPU's message must get out even if the holder
// is stuck or dead.
#include "testkernel/kprintf.h"

#include "testkernel/arch.h"
#include "testkernel/panic.h"
#include "testkernel/percpu.h"

namespace {

constexpr uint64_t kPanicWaitNs = 200'000'000;

// 0 when free, else the owner's token (its PerCpu address, or 1 before the per-CPU pointer
// exists, which only the boot CPU can be).
uintptr_t g_console_owner = 0;

uintptr_t my_token() {
  PerCpu* me = this_cpu();
  return me != nullptr ? reinterpret_cast<uintptr_t>(me) : 1;
}

// Holds the console for one kprintf. Masks interrupts for its lifetime.
class ConsoleGuard {
 public:
  ConsoleGuard() : irq_(arch::irq_save()) {
    uintptr_t me = my_token();
    if (__atomic_load_n(&g_console_owner, __ATOMIC_RELAXED) == me) return;  // Nested on this CPU.
    uint64_t deadline = 0;
    for (;;) {
      uintptr_t expected = 0;
      if (__atomic_compare_exchange_n(&g_console_owner, &expected, me, false, __ATOMIC_ACQUIRE,
                                      __ATOMIC_RELAXED)) {
        owned_ = true;
        return;
      }
      if (kpanic_in_progress()) {
        uint64_t now = arch::now_ns();
        if (deadline == 0) deadline = now + kPanicWaitNs;
        if (now >= deadline) return;  // Print without the lock.
      }
      arch::cpu_relax();
    }
  }
  ~ConsoleGuard() {
    if (owned_) __atomic_store_n(&g_console_owner, 0, __ATOMIC_RELEASE);
    arch::irq_restore(irq_);
  }
  ConsoleGuard(const ConsoleGuard&) = delete;
  ConsoleGuard& operator=(const ConsoleGuard&) = delete;

 private:
  uintptr_t irq_;
  bool owned_ = false;
};

// kprintf_set_capture's buffer (null: not capturing) and the next position in it.
char* g_capture_buf = nullptr;
size_t g_capture_size = 0;
size_t g_capture_len = 0;

// Time a captured character takes, as a 1 Mbaud UART would: long enough that CPUs printing at
// once overlap (a real UART's transmit wait gives them that chance too).
constexpr uint64_t kCaptureCharNs = 10'000;

void console_put(char c) {
  char* cap = __atomic_load_n(&g_capture_buf, __ATOMIC_ACQUIRE);
  if (cap != nullptr) {
    // One atomic slot per character: without the console lock, concurrent lines interleave here
    // as they would on the wire.
    size_t at = __atomic_fetch_add(&g_capture_len, 1, __ATOMIC_RELAXED);
    if (at < g_capture_size) cap[at] = c;
    uint64_t until = arch::now_ns() + kCaptureCharNs;
    while (arch::now_ns() < until) arch::cpu_relax();
    return;
  }
  if (c == '\n') arch::console_putc('\r');
  arch::console_putc(c);
}

// Where formatted characters go: the console, or a bounded buffer.
struct Sink {
  char* buf = nullptr;  // null: console.
  size_t size = 0;
  size_t count = 0;  // Characters produced so far (also those not stored).

  void put(char c) {
    if (buf == nullptr) {
      console_put(c);
    } else if (count + 1 < size) {
      buf[count] = c;
    }
    ++count;
  }
  void repeat(char c, int n) {
    for (int i = 0; i < n; ++i) put(c);
  }
};

struct Spec {
  bool left = false;
  bool zero = false;
  bool alt = false;
  bool plus = false;
  bool space = false;
  int width = 0;
  int precision = -1;
};

// Renders v in `base` backwards into the end of buf; returns the number of digits.
int render_unsigned(char* end, uint64_t v, unsigned base, bool upper) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  int n = 0;
  do {
    *--end = digits[v % base];
    v /= base;
    ++n;
  } while (v != 0);
  return n;
}

void emit_number(Sink& out, const Spec& spec, uint64_t magnitude, bool negative, unsigned base,
                 bool upper, const char* prefix) {
  char tmp[24];
  int ndig = 0;
  const char* digits = tmp + sizeof(tmp);
  // C: a zero value with precision 0 prints no digits.
  if (!(magnitude == 0 && spec.precision == 0)) {
    ndig = render_unsigned(tmp + sizeof(tmp), magnitude, base, upper);
    digits = tmp + sizeof(tmp) - ndig;
  }
  char sign = negative ? '-' : (spec.plus ? '+' : (spec.space ? ' ' : '\0'));
  int prefix_len = 0;
  while (prefix != nullptr && prefix[prefix_len] != '\0') ++prefix_len;
  int zeros = spec.precision > ndig ? spec.precision - ndig : 0;
  int body = ndig + zeros + prefix_len + (sign != '\0' ? 1 : 0);
  int pad = spec.width > body ? spec.width - body : 0;
  bool zero_pad = spec.zero && !spec.left && spec.precision < 0;
  if (zero_pad) {
    zeros += pad;
    pad = 0;
  }
  if (!spec.left) out.repeat(' ', pad);
  if (sign != '\0') out.put(sign);
  for (int i = 0; i < prefix_len; ++i) out.put(prefix[i]);
  out.repeat('0', zeros);
  for (int i = 0; i < ndig; ++i) out.put(digits[i]);
  if (spec.left) out.repeat(' ', pad);
}

void emit_string(Sink& out, const Spec& spec, const char* s) {
  if (s == nullptr) s = "(null)";
  int len = 0;
  while (s[len] != '\0' && (spec.precision < 0 || len < spec.precision)) ++len;
  int pad = spec.width > len ? spec.width - len : 0;
  if (!spec.left) out.repeat(' ', pad);
  for (int i = 0; i < len; ++i) out.put(s[i]);
  if (spec.left) out.repeat(' ', pad);
}

enum class Length { kInt, kChar, kShort, kLong, kLongLong, kSize, kMax, kPtrdiff };

int format(Sink& out, const char* fmt, va_list ap) {
  for (const char* p = fmt; *p != '\0'; ++p) {
    if (*p != '%') {
      out.put(*p);
      continue;
    }
    ++p;
    Spec spec;
    for (;; ++p) {
      if (*p == '-') {
        spec.left = true;
      } else if (*p == '0') {
        spec.zero = true;
      } else if (*p == '#') {
        spec.alt = true;
      } else if (*p == '+') {
        spec.plus = true;
      } else if (*p == ' ') {
        spec.space = true;
      } else {
        break;
      }
    }
    if (*p == '*') {
      spec.width = va_arg(ap, int);
      if (spec.width < 0) {
        spec.left = true;
        spec.width = -spec.width;
      }
      ++p;
    } else {
      while (*p >= '0' && *p <= '9') spec.width = spec.width * 10 + (*p++ - '0');
    }
    if (*p == '.') {
      ++p;
      spec.precision = 0;
      if (*p == '*') {
        spec.precision = va_arg(ap, int);
        if (spec.precision < 0) spec.precision = -1;
        ++p;
      } else {
        while (*p >= '0' && *p <= '9') spec.precision = spec.precision * 10 + (*p++ - '0');
      }
    }
    Length len = Length::kInt;
    if (*p == 'h') {
      ++p;
      len = Length::kShort;
      if (*p == 'h') {
        ++p;
        len = Length::kChar;
      }
    } else if (*p == 'l') {
      ++p;
      len = Length::kLong;
      if (*p == 'l') {
        ++p;
        len = Length::kLongLong;
      }
    } else if (*p == 'z') {
      ++p;
      len = Length::kSize;
    } else if (*p == 'j') {
      ++p;
      len = Length::kMax;
    } else if (*p == 't') {
      ++p;
      len = Length::kPtrdiff;
    }

    auto get_signed = [&]() -> int64_t {
      switch (len) {
        case Length::kChar:
          return static_cast<signed char>(va_arg(ap, int));
        case Length::kShort:
          return static_cast<short>(va_arg(ap, int));
        case Length::kLong:
          return va_arg(ap, long);
        case Length::kLongLong:
          return va_arg(ap, long long);
        case Length::kSize:
          return static_cast<int64_t>(va_arg(ap, size_t));
        case Length::kMax:
          return va_arg(ap, intmax_t);
        case Length::kPtrdiff:
          return va_arg(ap, ptrdiff_t);
        case Length::kInt:
          break;
      }
      return va_arg(ap, int);
    };
    auto get_unsigned = [&]() -> uint64_t {
      switch (len) {
        case Length::kChar:
          return static_cast<unsigned char>(va_arg(ap, unsigned));
        case Length::kShort:
          return static_cast<unsigned short>(va_arg(ap, unsigned));
        case Length::kLong:
          return va_arg(ap, unsigned long);
        case Length::kLongLong:
          return va_arg(ap, unsigned long long);
        case Length::kSize:
          return va_arg(ap, size_t);
        case Length::kMax:
          return va_arg(ap, uintmax_t);
        case Length::kPtrdiff:
          return static_cast<uint64_t>(va_arg(ap, ptrdiff_t));
        case Length::kInt:
          break;
      }
      return va_arg(ap, unsigned);
    };

    switch (*p) {
      case 'd':
      case 'i': {
        int64_t v = get_signed();
        uint64_t mag = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
        emit_number(out, spec, mag, v < 0, 10, false, nullptr);
        break;
      }
      case 'u':
        emit_number(out, spec, get_unsigned(), false, 10, false, nullptr);
        break;
      case 'x':
      case 'X': {
        uint64_t v = get_unsigned();
        bool upper = *p == 'X';
        emit_number(out, spec, v, false, 16, upper,
                    spec.alt && v != 0 ? (upper ? "0X" : "0x") : nullptr);
        break;
      }
      case 'o': {
        uint64_t v = get_unsigned();
        emit_number(out, spec, v, false, 8, false, spec.alt && v != 0 ? "0" : nullptr);
        break;
      }
      case 'p': {
        auto v = reinterpret_cast<uintptr_t>(va_arg(ap, void*));
        emit_number(out, spec, v, false, 16, false, "0x");
        break;
      }
      case 'c': {
        char c = static_cast<char>(va_arg(ap, int));
        int pad = spec.width > 1 ? spec.width - 1 : 0;
        if (!spec.left) out.repeat(' ', pad);
        out.put(c);
        if (spec.left) out.repeat(' ', pad);
        break;
      }
      case 's':
        emit_string(out, spec, va_arg(ap, const char*));
        break;
      case '%':
        out.put('%');
        break;
      case '\0':
        --p;  // A lone '%' at the end: stop at the terminator.
        break;
      default:
        // Unknown conversion: show it, so the mistake is visible in the output.
        out.put('%');
        out.put(*p);
        break;
    }
  }
  return static_cast<int>(out.count);
}

}  // namespace

int kvprintf(const char* fmt, va_list ap) {
  ConsoleGuard guard;
  Sink out;
  return format(out, fmt, ap);
}

int kprintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = kvprintf(fmt, ap);
  va_end(ap);
  return n;
}

int kvsnprintf(char* buf, size_t size, const char* fmt, va_list ap) {
  Sink out;
  out.buf = buf;
  out.size = size;
  int n = format(out, fmt, ap);
  if (size > 0) buf[out.count < size ? out.count : size - 1] = '\0';
  return n;
}

int ksnprintf(char* buf, size_t size, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = kvsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

void kputs(const char* s) {
  ConsoleGuard guard;
  Sink out;
  while (*s != '\0') out.put(*s++);
}

size_t kprintf_set_capture(char* buf, size_t size) {
  ConsoleGuard guard;  // No line is half captured.
  if (buf != nullptr) {
    g_capture_size = size;
    __atomic_store_n(&g_capture_len, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&g_capture_buf, buf, __ATOMIC_RELEASE);
    return 0;
  }
  __atomic_store_n(&g_capture_buf, nullptr, __ATOMIC_RELEASE);
  return __atomic_load_n(&g_capture_len, __ATOMIC_RELAXED);
}

const char* format_size(char* buf, size_t size, uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  unsigned u = 0;
  uint64_t v = bytes;
  while (u + 1 < sizeof(kUnits) / sizeof(kUnits[0]) && v != 0 && v % 1024 == 0) {
    v /= 1024;
    ++u;
  }
  ksnprintf(buf, size, "%llu %s", static_cast<unsigned long long>(v), kUnits[u]);
  return buf;
}
