// The host build's support_panic: aborts with the message, so a broken invariant kills the test
// (GoogleTest death tests check for the message).
#pragma once
