// Fixed-width integers and size_t without a hosted libc: the compiler's own headers only.
#pragma once

#include <stddef.h>  // freestanding: provided by the compiler
#include <stdint.h>  // freestanding: provided by the compiler
