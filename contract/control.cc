struct WithDestructor {
  ~WithDestructor() { x = 1; }
  int x = 0;
};
WithDestructor g_object;
