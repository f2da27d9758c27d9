// Better-Auth as a textbook's sign-in server: email and password, with the JWT plugin handing
// out the short-lived tokens the chat server verifies against /api/auth/jwks. The reader's
// background lives on the Better-Auth user (additionalFields) and travels in the token, where
// textbook-chat reads it for personalized chapters.
import { betterAuth } from "better-auth";
import { jwt } from "better-auth/plugins";
import pg from "pg";
import * as z from "zod";

const background = z.string().max(2000);
const level = z.enum(["beginner", "intermediate", "advanced"]);

export function makeAuth(env = process.env) {
  return betterAuth({
    baseURL: env.BETTER_AUTH_URL, // also the tokens' iss and aud: JWT_ISSUER = JWT_AUDIENCE = this
    secret: env.BETTER_AUTH_SECRET,
    database: new pg.Pool({ connectionString: env.DATABASE_URL }),
    trustedOrigins: (env.TRUSTED_ORIGINS ?? "").split(",").filter(Boolean), // the book's origin
    telemetry: { enabled: false },
    emailAndPassword: { enabled: true },
    user: {
      additionalFields: {
        // Better-Auth stores these as given unless a validator says otherwise (`type` alone is not
        // checked): the limits are textbook-chat's, so a profile it would refuse is refused here.
        softwareBackground: { type: "string", required: false, validator: { input: background } },
        hardwareBackground: { type: "string", required: false, validator: { input: background } },
        level: { type: "string", required: false, validator: { input: level } },
      },
    },
    plugins: [
      jwt({
        jwt: {
          expirationTime: env.JWT_EXPIRATION ?? "15m",
          // The claims textbook-chat reads: sub (added by the plugin) and the reader's profile.
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
          // EdDSA (Ed25519) is the plugin's default; textbook-chat accepts EdDSA, ES256 and RS256.
          keyPairConfig: { alg: "EdDSA", crv: "Ed25519" },
          // A rotated key is published beside the old one (which stays for the grace period).
          rotationInterval: env.JWKS_ROTATION_SECONDS ? Number(env.JWKS_ROTATION_SECONDS) : undefined,
        },
      }),
    ],
  });
}
