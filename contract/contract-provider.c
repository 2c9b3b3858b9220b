void memcpy(void) {}
void memset(void) {}
void support_panic(void) {}
void contract_entry(void) {}
