/** The service's origin: VITE_KIMI_URL at build time, else the service `make run` starts. */
export const KIMI_URL: string = import.meta.env.VITE_KIMI_URL ?? 'http://localhost:3000';
