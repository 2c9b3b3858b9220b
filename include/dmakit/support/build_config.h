/* The library's build configuration, seen the same way by the library and by every object that
 * includes a public header. Every C++ public header includes this one first (directly or
 * through dmakit/support/types.h); dmakit/kernel_hooks.h, plain C and the same in every
 * configuration, need not.
 *
 * The configuration is five macros, each 0 or 1:
 *   DMA_DEBUG            KDEBUG_ASSERT checks (and, by default, DMA_STATS)
 *   DMA_API_DEBUG        the misuse checker (DmaDebug; changes DmaMapResult and DmaCallSite)
 *   DMA_STATS            KernelDmaOp's statistics (changes KernelDmaOp's layout)
 *   DMA_FAULT_INJECTION  FAULT_POINT sites (inline code)
 *   DMA_PAGE_POISON      the page allocator's poison checker (changes PageFrameAllocator's layout)
 * They change structure layouts and inline code, so every object linked together must agree on
 * them. Where they come from:
 *   - a library built with `make lib` ships them in its generated dmakit/config.h (next to the
 *     public headers of its output tree); a kernel defines none of them itself (config.h refuses
 *     a -D that disagrees);
 *   - in the source tree there is no dmakit/config.h on the include path of the host builds: they
 *     pass -D flags, and a macro left undefined is 0 (DMA_STATS: DMA_DEBUG's value). The kernel
 *     builds of the Makefile add the generated header's directory, like a kernel would.
 *
 * The link-time tag: the library defines one symbol that names its configuration,
 *   dmakit_config_<release|debug|custom>_v1__DMA_DEBUG_<0|1>_DMA_API_DEBUG_<0|1>_DMA_STATS_<0|1>_
 *   DMA_FAULT_INJECTION_<0|1>_DMA_PAGE_POISON_<0|1>
 * (release: all 0; debug: DMA_DEBUG, DMA_API_DEBUG and DMA_STATS 1, the others 0; custom: any
 * other combination), and every C++ object that includes a public header references the one its
 * own view of the macros names. An object compiled against another configuration than the
 * library's therefore fails to link, with an undefined symbol that says which configuration it
 * expected, instead of silently disagreeing with the library about a layout. C objects do not
 * reference it: the C interface's types do not depend on the configuration.
 *
 * Also C (C11): only the preprocessor and, under C++, one declaration. */
#ifndef DMAKIT_SUPPORT_BUILD_CONFIG_H
#define DMAKIT_SUPPORT_BUILD_CONFIG_H

#if defined(__has_include)
#if __has_include(<dmakit/config.h>)
#include <dmakit/config.h>
#endif
#endif

#ifndef DMA_DEBUG
#define DMA_DEBUG 0
#endif
#ifndef DMA_API_DEBUG
#define DMA_API_DEBUG 0
#endif
#ifndef DMA_STATS
#if DMA_DEBUG
#define DMA_STATS 1
#else
#define DMA_STATS 0
#endif
#endif
#ifndef DMA_FAULT_INJECTION
#define DMA_FAULT_INJECTION 0
#endif
#ifndef DMA_PAGE_POISON
#define DMA_PAGE_POISON 0
#endif

/* The same five, normalised to the single tokens 0 or 1 (the tag is pasted from them). */
#if DMA_DEBUG
#define DMAKIT_CFG_DEBUG_ 1
#else
#define DMAKIT_CFG_DEBUG_ 0
#endif
#if DMA_API_DEBUG
#define DMAKIT_CFG_API_DEBUG_ 1
#else
#define DMAKIT_CFG_API_DEBUG_ 0
#endif
#if DMA_STATS
#define DMAKIT_CFG_STATS_ 1
#else
#define DMAKIT_CFG_STATS_ 0
#endif
#if DMA_FAULT_INJECTION
#define DMAKIT_CFG_FAULT_INJECTION_ 1
#else
#define DMAKIT_CFG_FAULT_INJECTION_ 0
#endif
#if DMA_PAGE_POISON
#define DMAKIT_CFG_PAGE_POISON_ 1
#else
#define DMAKIT_CFG_PAGE_POISON_ 0
#endif

/* The configuration's name, as `make lib LIB_CONFIG=...` spells the two it builds. */
#if !DMA_DEBUG && !DMA_API_DEBUG && !DMA_STATS && !DMA_FAULT_INJECTION && !DMA_PAGE_POISON
#define DMAKIT_CFG_NAME_ dmakit_config_release_v1
#elif DMA_DEBUG && DMA_API_DEBUG && DMA_STATS && !DMA_FAULT_INJECTION && !DMA_PAGE_POISON
#define DMAKIT_CFG_NAME_ dmakit_config_debug_v1
#else
#define DMAKIT_CFG_NAME_ dmakit_config_custom_v1
#endif

/* The name is a whole identifier before the pasting, so that no macro of the includer (a kernel's
 * `debug`) can replace it. */
#define DMAKIT_CFG_PASTE_(name, d, a, s, f, p) \
  name##__DMA_DEBUG_##d##_DMA_API_DEBUG_##a##_DMA_STATS_##s##_##DMA_FAULT_INJECTION_##f##_DMA_PAGE_POISON_##p
#define DMAKIT_CFG_TAG_(name, d, a, s, f, p) DMAKIT_CFG_PASTE_(name, d, a, s, f, p)

/* The tag's symbol (an identifier). */
#define DMAKIT_CONFIG_TAG                                                                        \
  DMAKIT_CFG_TAG_(DMAKIT_CFG_NAME_, DMAKIT_CFG_DEBUG_, DMAKIT_CFG_API_DEBUG_, DMAKIT_CFG_STATS_, \
                  DMAKIT_CFG_FAULT_INJECTION_, DMAKIT_CFG_PAGE_POISON_)

#ifdef __cplusplus
/* Defined by the library (support/build_config.cc), in exactly one configuration. */
extern "C" const char DMAKIT_CONFIG_TAG;

namespace dmakit_config_detail {
/* One per translation unit: kept by the compiler (used) and, where the linker collects unused
 * sections, by the linker too (retain), so that the reference reaches the link. */
#if defined(__has_attribute)
#if __has_attribute(retain)
#define DMAKIT_CFG_RETAIN_ __attribute__((retain))
#endif
#endif
#ifndef DMAKIT_CFG_RETAIN_
#define DMAKIT_CFG_RETAIN_
#endif
__attribute__((used)) DMAKIT_CFG_RETAIN_ static const char* const kLinkTag = &DMAKIT_CONFIG_TAG;
}  // namespace dmakit_config_detail
#endif

#endif /* DMAKIT_SUPPORT_BUILD_CONFIG_H */
