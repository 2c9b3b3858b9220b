// FuzzInput: turns libFuzzer's bytes into the small choices an operation sequence needs. Reading
// past the end yields zeroes, so every input is a valid (if short) sequence; done() tells the
// harness to stop.
#pragma once

#include <cstddef>
#include <cstdint>

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}

  bool done() const { return p_ >= end_; }

  uint8_t u8() { return p_ < end_ ? *p_++ : 0; }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return static_cast<uint32_t>(u16()) | (static_cast<uint32_t>(u16()) << 16); }
  uint64_t u64() { return static_cast<uint64_t>(u32()) | (static_cast<uint64_t>(u32()) << 32); }
  bool boolean() { return (u8() & 1) != 0; }
  // A value in [lo, hi] (inclusive), from as few bytes as the span needs.
  uint64_t range(uint64_t lo, uint64_t hi) {
    uint64_t span = hi - lo;
    if (span == 0) return lo;
    uint64_t v;
    if (span < 0x100) {
      v = u8();
    } else if (span < 0x10000) {
      v = u16();
    } else if (span < 0x1'0000'0000ull) {
      v = u32();
    } else {
      v = u64();
    }
    return span == ~0ull ? v : lo + v % (span + 1);
  }
  // One of n choices.
  size_t pick(size_t n) { return static_cast<size_t>(range(0, n - 1)); }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// Stops the run with a message: libFuzzer saves the input as a crash artifact.
[[noreturn]] void fuzz_fail(const char* file, int line, const char* what);

#define FUZZ_CHECK(cond)                                                \
  do {                                                                  \
    if (!(cond)) fuzz_fail(__FILE__, __LINE__, "check failed: " #cond); \
  } while (0)
