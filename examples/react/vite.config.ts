import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// The example imports the SDK straight from ../../static, so that it always runs the files the
// service serves. An app that copies kimi-sdk.js and kimi-react.js into its own src/ needs
// neither setting below.
export default defineConfig({
  plugins: [react()],
  // kimi-react.js imports React: resolve it from this app, not from static/ (which has none).
  resolve: { dedupe: ['react', 'react-dom'] },
  server: { fs: { allow: ['../..'] } },
});
