// Small string helpers for freestanding kernel code (the kernel has no libc string functions
// besides the mem* family). All take NUL-terminated strings; none allocates. Safe anywhere,
// including with interrupts off.
#pragma once

#include "dmakit/support/types.h"

namespace kstr {

size_t length(const char* s);
bool equal(const char* a, const char* b);
// True if `s` starts with `prefix`.
bool starts_with(const char* s, const char* prefix);
// True if `needle` occurs in `s` ("" occurs everywhere).
bool contains(const char* s, const char* needle);
// Case-insensitive ASCII comparison of exactly n characters (a NUL in either stops with false
// unless both end there).
bool equal_nocase_n(const char* a, const char* b, size_t n);
// Looks for a whitespace-separated `key=value` word in a command line (the last one wins). On
// success copies the value (NUL-terminated, truncated to out_size - 1 bytes) and returns true.
bool cmdline_value(const char* cmdline, const char* key, char* out, size_t out_size);
// True if the whitespace-separated word `word` appears in `s`.
bool has_word(const char* s, const char* word);

}  // namespace kstr
