// A doubly linked intrusive list: the node lives in the element, so insertion and removal never
// allocate and cost O(1). An element is on at most one list per ListNode member.
#pragma once

#include "dmakit/support/assert.h"
#include "dmakit/support/types.h"

namespace support {

struct ListNode {
  ListNode* prev = nullptr;
  ListNode* next = nullptr;
  bool linked() const { return next != nullptr; }
};

// `Member` is a pointer to the ListNode member of T.
template <typename T, ListNode T::* Member>
class IntrusiveList {
 public:
  IntrusiveList() { head_.prev = head_.next = &head_; }
  IntrusiveList(const IntrusiveList&) = delete;
  IntrusiveList& operator=(const IntrusiveList&) = delete;

  bool empty() const { return head_.next == &head_; }
  size_t size() const { return size_; }

  void push_back(T* t) { insert_before(&head_, node(t)); }
  void push_front(T* t) { insert_before(head_.next, node(t)); }

  // Precondition: t is on this list.
  void remove(T* t) {
    ListNode* n = node(t);
    KASSERT(n->linked(), "removing an element that is on no list");
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = nullptr;
    --size_;
  }

  T* front() { return empty() ? nullptr : owner(head_.next); }
  T* pop_front() {
    T* t = front();
    if (t != nullptr) remove(t);
    return t;
  }

  // Calls f(T*) for each element; f must not remove elements other than the one it is given.
  template <typename F>
  void for_each(F f) {
    for (ListNode* n = head_.next; n != &head_;) {
      ListNode* next = n->next;
      f(owner(n));
      n = next;
    }
  }

 private:
  static ListNode* node(T* t) { return &(t->*Member); }
  static T* owner(ListNode* n) {
    // Offset of the member, computed without a null-pointer dereference.
    alignas(T) static char probe_storage[sizeof(T)];
    T* probe = reinterpret_cast<T*>(probe_storage);
    auto off = reinterpret_cast<char*>(&(probe->*Member)) - reinterpret_cast<char*>(probe);
    return reinterpret_cast<T*>(reinterpret_cast<char*>(n) - off);
  }
  void insert_before(ListNode* pos, ListNode* n) {
    KASSERT(!n->linked(), "inserting an element that is already on a list");
    n->next = pos;
    n->prev = pos->prev;
    pos->prev->next = n;
    pos->prev = n;
    ++size_;
  }

  ListNode head_;
  size_t size_ = 0;
};

}  // namespace support
