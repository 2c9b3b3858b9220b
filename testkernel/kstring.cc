#include "testkernel/kstring.h"

namespace kstr {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

}  // namespace

size_t length(const char* s) {
  size_t n = 0;
  while (s[n] != '\0') ++n;
  return n;
}

bool equal(const char* a, const char* b) {
  while (*a != '\0' && *a == *b) {
    ++a;
    ++b;
  }
  return *a == *b;
}

bool starts_with(const char* s, const char* prefix) {
  while (*prefix != '\0') {
    if (*s++ != *prefix++) return false;
  }
  return true;
}

bool contains(const char* s, const char* needle) {
  if (*needle == '\0') return true;
  for (; *s != '\0'; ++s) {
    if (starts_with(s, needle)) return true;
  }
  return false;
}

bool equal_nocase_n(const char* a, const char* b, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
    if (a[i] == '\0') return true;
  }
  return true;
}

bool cmdline_value(const char* cmdline, const char* key, char* out, size_t out_size) {
  size_t klen = length(key);
  const char* p = cmdline;
  bool found = false;
  // The last occurrence wins, so words appended later override earlier ones.
  while (*p != '\0') {
    while (is_space(*p)) ++p;
    const char* word = p;
    while (*p != '\0' && !is_space(*p)) ++p;
    if (static_cast<size_t>(p - word) > klen && starts_with(word, key) && word[klen] == '=') {
      const char* v = word + klen + 1;
      size_t n = 0;
      while (v + n < p && n + 1 < out_size) {
        out[n] = v[n];
        ++n;
      }
      if (out_size > 0) out[n] = '\0';
      found = true;
    }
  }
  return found;
}

bool has_word(const char* s, const char* word) {
  size_t wlen = length(word);
  const char* p = s;
  while (*p != '\0') {
    while (is_space(*p)) ++p;
    const char* w = p;
    while (*p != '\0' && !is_space(*p)) ++p;
    if (static_cast<size_t>(p - w) == wlen && wlen > 0 && starts_with(w, word)) return true;
  }
  return false;
}

}  // namespace kstr
