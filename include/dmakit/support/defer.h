// Runs a callable at scope exit unless cancelled: undoes a multi-step setup on an error path.
#pragma once

#include "dmakit/support/utility.h"

namespace support {

template <typename F>
class [[nodiscard]] Defer {
 public:
  explicit Defer(F f) : f_(support::move(f)) {}
  ~Defer() {
    if (armed_) f_();
  }
  Defer(const Defer&) = delete;
  Defer& operator=(const Defer&) = delete;
  Defer(Defer&&) = delete;
  Defer& operator=(Defer&&) = delete;
  // The setup succeeded: do not run the callable.
  void cancel() { armed_ = false; }

 private:
  F f_;
  bool armed_ = true;
};

template <typename F>
Defer<F> defer(F f) {
  return Defer<F>(support::move(f));
}

}  // namespace support
