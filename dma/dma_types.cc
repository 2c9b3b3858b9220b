#include "dmakit/dma_types.h"

const char* dma_direction_name(DmaDirection dir) {
  switch (dir) {
    case DmaDirection::kToDevice:
      return "to-device";
    case DmaDirection::kFromDevice:
      return "from-device";
    case DmaDirection::kBidirectional:
      return "bidirectional";
  }
  return "invalid";
}
