// Host test runner: GoogleTest, plus the closing "N passed, N failed" line the project's runners
// share, and the panic hook the subsystem calls on a broken invariant.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "tests/host/panic_hook.h"

namespace {

class SummaryPrinter : public testing::EmptyTestEventListener {
  void OnTestProgramEnd(const testing::UnitTest& unit) override {
    std::printf("%d passed, %d failed\n", unit.successful_test_count(), unit.failed_test_count());
    std::fflush(stdout);
  }
};

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  testing::UnitTest::GetInstance()->listeners().Append(new SummaryPrinter);
  return RUN_ALL_TESTS();
}
