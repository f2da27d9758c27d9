// Better-Auth as a textbook's sign-in server: email and password, with the JWT plugin handing
// out the short-lived tokens the chat server verifies against /api/auth/jwks. The reader's
// background lives on the Better-Auth user (additionalFields) and travels in the token, where
// textbook-chat reads it for personalized chapters. The README quotes this file.
import { betterAuth } from "better-auth";
import { jwt } from "better-auth/plugins";
import pg from "pg";
import * as z from "zod";

export function makeAuth(env = process.env) {
  return betterAuth({
    baseURL: env.BETTER_AUTH_URL, // also the tokens' iss and aud: JWT_ISSUER = JWT_AUDIENCE = this
    secret: env.BETTER_AUTH_SECRET,
    database: new pg.Pool({ connectionString: env.DATABASE_URL }),
    trustedOrigins: (env.TRUSTED_ORIGINS ?? "").split(",").filter(Boolean), // the book's origin
    telemetry: { enabled: false },
    emailAndPassword: { enabled: true },
    user: {
      // Better-Auth checks a value only with a validator: these hold textbook-chat's limits, so a
      // profile the chat server would refuse is refused at sign-up.
      additionalFields: {
        softwareBackground: {
          type: "string",
          required: false,
          validator: { input: z.string().max(2000) },
        },
        hardwareBackground: {
          type: "string",
          required: false,
          validator: { input: z.string().max(2000) },
        },
        level: {
          type: "string",
          required: false,
          validator: { input: z.enum(["beginner", "intermediate", "advanced"]) },
        },
      },
    },
    plugins: [
      jwt({
        jwt: {
          expirationTime: env.JWT_EXPIRATION ?? "15m",
          // sub is the user id (the plugin adds it); the profile is what textbook-chat reads.
          definePayload: ({ user }) => ({
            name: user.name,
            profile: {
              level: user.level,
              softwareBackground: user.softwareBackground,
              hardwareBackground: user.hardwareBackground,
            },
          }),
        },
        jwks: {
          keyPairConfig: { alg: "EdDSA", crv: "Ed25519" }, // the default; ES256 and RS256 work too
          // A new key signs once the current one is this old; the old stays in the JWKS.
          rotationInterval: env.JWKS_ROTATION_SECONDS ? Number(env.JWKS_ROTATION_SECONDS) : undefined,
        },
      }),
    ],
  });
}
