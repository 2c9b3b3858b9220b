// The library's link-time configuration tag: see dmakit/support/build_config.h.
#include "dmakit/support/build_config.h"

// One definition, named after the configuration this file (and so the whole library) was compiled
// in; every C++ object that includes a public header references the name of its own.
extern "C" {
const char DMAKIT_CONFIG_TAG = 0;
}
