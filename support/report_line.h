// ReportLine: one line of diagnostic text built in a fixed buffer, without a hosted library, for
// the report lines of the allocators and the misuse checker. Text past the buffer is dropped.
//
// CRTP: a user derives `class Line : public support::ReportLine<Line>` and adds the words of its
// domain (a device's name, a report's head); every method returns the derived type, so calls
// chain across both. Any context: it touches nothing but itself.
#pragma once

#include "dmakit/support/types.h"

namespace support {

template <typename Derived, size_t kCapacity = 400>
class ReportLine {
 public:
  ReportLine() { buf_[0] = '\0'; }

  // Appends `s` ("(null)" for a null pointer).
  Derived& str(const char* s) {
    if (s == nullptr) s = "(null)";
    while (*s != '\0' && n_ + 1 < kCapacity) buf_[n_++] = *s++;
    buf_[n_] = '\0';
    return self();
  }
  // Appends `v` in decimal.
  Derived& dec(uint64_t v) {
    char tmp[24];
    size_t i = 0;
    do {
      tmp[i++] = static_cast<char>('0' + (v % 10));
      v /= 10;
    } while (v != 0);
    return digits(tmp, i);
  }
  // Appends `v` in hexadecimal with a 0x prefix.
  Derived& hex(uint64_t v) {
    str("0x");
    char tmp[16];
    size_t i = 0;
    do {
      tmp[i++] = "0123456789abcdef"[v & 0xF];
      v >>= 4;
    } while (v != 0);
    return digits(tmp, i);
  }
  // Appends a pointer's value in hexadecimal.
  Derived& ptr(const void* p) { return hex(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p))); }

  const char* c_str() const { return buf_; }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  // Appends tmp[n - 1] .. tmp[0] (digits are produced least significant first).
  Derived& digits(const char* tmp, size_t n) {
    while (n > 0 && n_ + 1 < kCapacity) buf_[n_++] = tmp[--n];
    buf_[n_] = '\0';
    return self();
  }

  char buf_[kCapacity];
  size_t n_ = 0;
};

}  // namespace support
