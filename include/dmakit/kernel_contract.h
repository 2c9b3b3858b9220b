/* What a kernel linking libdma.a must define: every symbol the library leaves undefined, on every
 * architecture, in the release and the debug configuration. Nothing else: no C++ runtime
 * (libdma.a defines its own weak __cxa_pure_virtual, needs no operator new or delete, registers
 * no destructor and has no constructor to run), no memmove, no memcmp. C and C++ (this header is
 * both); a kernel may include it to have its definitions checked against these declarations.
 *
 * The list below, on the line starting "dmakit-kernel-symbols:", is what scripts/check_contract.sh
 * (part "contract" of make test) links against: the whole archive plus an object defining exactly
 * these symbols must link, and each of them must really be needed. */
/* dmakit-kernel-symbols: memcpy memset support_panic */
#ifndef DMAKIT_KERNEL_CONTRACT_H
#define DMAKIT_KERNEL_CONTRACT_H

#include <stddef.h> /* freestanding: provided by the compiler */

#ifdef __cplusplus
extern "C" {
#endif

/* memcpy and memset, with their C signatures and semantics (copy n bytes between buffers that
 * do not overlap; fill n bytes with (unsigned char)c; both return dst). The compiler emits calls
 * to them for structure copies and large initialisations, and the library calls them for bounce
 * copies and zeroing; any context, and they must not take locks. Not declared here: the kernel's
 * own <string.h> does, and in C++ two declarations that differ in their exception specification
 * (glibc's say noexcept) do not compile together. */

/* Called on a broken invariant (a library bug or a violated precondition that the library
 * detected): must not return. Never called for bad input or exhaustion, which are errors the
 * caller gets back. Any context, with the library's locks possibly held. */
#ifdef __cplusplus
[[noreturn]]
#else
_Noreturn
#endif
void support_panic(const char* file, int line, const char* msg);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DMAKIT_KERNEL_CONTRACT_H */
