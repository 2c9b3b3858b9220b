// Fixed-width integers and size_t without a hosted libc: the compiler's own headers only.
#pragma once

#include "dmakit/support/build_config.h"  // first: the configuration every header agrees on

#include <stddef.h>  // freestanding: provided by the compiler
#include <stdint.h>  // freestanding: provided by the compiler
