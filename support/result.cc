#include "dmakit/support/result.h"

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk:
      return "ok";
    case ErrorCode::kNoMemory:
      return "no memory";
    case ErrorCode::kLayoutError:
      return "layout error";
    case ErrorCode::kDmaMaskNotMatch:
      return "dma mask not match";
    case ErrorCode::kInvalidArgument:
      return "invalid argument";
    case ErrorCode::kNotFound:
      return "not found";
    case ErrorCode::kOutOfRange:
      return "out of range";
    case ErrorCode::kBusy:
      return "busy";
    case ErrorCode::kTimedOut:
      return "timed out";
    case ErrorCode::kIoError:
      return "i/o error";
    case ErrorCode::kNotSupported:
      return "not supported";
    case ErrorCode::kNotContiguous:
      return "not physically contiguous";
  }
  return "unknown";
}
