import { defineConfig } from 'vitest/config';

// Each test file starts one PocketIC server (the emulator's door); installs compile a Motoko module.
export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    fileParallelism: false,
  },
});
