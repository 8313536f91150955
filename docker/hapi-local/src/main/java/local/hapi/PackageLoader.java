package local.hapi;

import ca.uhn.fhir.batch2.coordinator.JobDefinitionRegistry;
import ca.uhn.fhir.batch2.model.JobDefinition;
import ca.uhn.fhir.jpa.packages.IPackageInstallerSvc;
import ca.uhn.fhir.jpa.packages.PackageInstallOutcomeJson;
import ca.uhn.fhir.jpa.packages.PackageInstallationSpec;
import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveOutputStream;
import org.hl7.fhir.utilities.npm.NpmPackage;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.ListableBeanFactory;
import org.springframework.beans.factory.SmartInitializingSingleton;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import java.util.zip.GZIPOutputStream;

/**
 * Installs local FHIR NPM package(s) (profiles, extensions, value sets, search parameters ...) into the
 * server at start-up, before the HTTP port is opened, so that the first successful /metadata call
 * means the profiles are there.
 * <p>
 * HAPI_IG_DIR (default {@code ../../profiles}, i.e. {@code <repo>/profiles}) may be:
 * <ul>
 * <li>a directory containing {@code package/package.json} (an unpacked NPM package),</li>
 * <li>a directory containing {@code package.json} directly (the contents of the "package" folder),</li>
 * <li>a directory containing one or more {@code *.tgz} packages,</li>
 * <li>a single {@code .tgz} file.</li>
 * </ul>
 * Anything else (in particular a missing directory) is skipped silently. Dependencies are not
 * fetched (there is no package registry access); FHIR core is built in.
 */
public class PackageLoader implements SmartInitializingSingleton {

	private static final Logger ourLog = LoggerFactory.getLogger(PackageLoader.class);

	private final IPackageInstallerSvc myInstaller;
	private final JobDefinitionRegistry myJobDefinitionRegistry;
	private final ListableBeanFactory myBeanFactory;

	public PackageLoader(
			IPackageInstallerSvc theInstaller,
			JobDefinitionRegistry theJobDefinitionRegistry,
			ListableBeanFactory theBeanFactory) {
		myInstaller = theInstaller;
		myJobDefinitionRegistry = theJobDefinitionRegistry;
		myBeanFactory = theBeanFactory;
	}

	@Override
	public void afterSingletonsInstantiated() {
		Path source = Env.igDir();
		List<byte[]> packages;
		try {
			packages = collect(source);
		} catch (IOException e) {
			ourLog.error("Could not read FHIR package(s) from {} - continuing without them", source, e);
			return;
		}
		if (packages.isEmpty()) {
			ourLog.info("No FHIR package found at {} - nothing to install", source);
			return;
		}
		// HAPI registers its Batch2 job definitions only on ContextRefreshedEvent, i.e. after the port is open.
		// Installing a SearchParameter submits a REINDEX job, so register the definitions now (the later
		// registration of the very same instances is a no-op).
		for (JobDefinition<?> definition : myBeanFactory.getBeansOfType(JobDefinition.class).values()) {
			myJobDefinitionRegistry.addJobDefinitionIfNotRegistered(definition);
		}
		for (byte[] tgz : packages) {
			install(tgz, source);
		}
	}

	private void install(byte[] theTgz, Path theSource) {
		String name = null;
		String version = null;
		try {
			NpmPackage npm = NpmPackage.fromPackage(new ByteArrayInputStream(theTgz));
			name = npm.name();
			version = npm.version();
			long start = System.currentTimeMillis();
			// HAPI keeps a copy of every installed package version and, when the same name#version is installed
			// again, silently re-uses that old copy. Drop it first so edits to profiles/ are picked up on restart
			// without a version bump. (This only removes HAPI's package cache entry; the installed
			// StructureDefinitions etc. are then created-or-updated by canonical URL.)
			myInstaller.uninstall(new PackageInstallationSpec().setName(name).setVersion(version));
			PackageInstallationSpec spec = new PackageInstallationSpec()
					.setName(name)
					.setVersion(version)
					.setInstallMode(PackageInstallationSpec.InstallModeEnum.STORE_AND_INSTALL)
					.setFetchDependencies(false)
					.setPackageContents(theTgz);
			PackageInstallOutcomeJson outcome = myInstaller.install(spec);
			ourLog.info(
					"Installed FHIR package {}#{} from {} in {} ms: {}",
					name,
					version,
					theSource,
					System.currentTimeMillis() - start,
					outcome.getResourcesInstalled());
		} catch (Exception e) {
			// A broken package must not take the whole server down; the error is in target/hapi.log
			ourLog.error("Installing FHIR package {}#{} from {} FAILED", name, version, theSource, e);
		}
	}

	static List<byte[]> collect(Path theSource) throws IOException {
		List<byte[]> retVal = new ArrayList<>();
		if (Files.isRegularFile(theSource) && theSource.toString().endsWith(".tgz")) {
			retVal.add(Files.readAllBytes(theSource));
		} else if (Files.isDirectory(theSource)) {
			if (Files.isRegularFile(theSource.resolve("package").resolve("package.json"))) {
				retVal.add(tarGz(theSource.resolve("package")));
			} else if (Files.isRegularFile(theSource.resolve("package.json"))) {
				retVal.add(tarGz(theSource));
			} else {
				try (Stream<Path> files = Files.list(theSource)) {
					for (Path tgz : files.filter(f -> f.toString().endsWith(".tgz"))
							.sorted()
							.toList()) {
						retVal.add(Files.readAllBytes(tgz));
					}
				}
			}
		}
		return retVal;
	}

	/** Packs a directory (the NPM "package" folder) into an in-memory .tgz with entries under package/. */
	private static byte[] tarGz(Path thePackageDir) throws IOException {
		ByteArrayOutputStream bytes = new ByteArrayOutputStream();
		try (TarArchiveOutputStream tar = new TarArchiveOutputStream(new GZIPOutputStream(bytes))) {
			tar.setLongFileMode(TarArchiveOutputStream.LONGFILE_POSIX);
			List<Path> files;
			try (Stream<Path> walk = Files.walk(thePackageDir)) {
				files = walk.filter(Files::isRegularFile).sorted().toList();
			}
			for (Path file : files) {
				String entryName = "package/"
						+ thePackageDir.relativize(file).toString().replace('\\', '/');
				TarArchiveEntry entry = new TarArchiveEntry(entryName);
				entry.setSize(Files.size(file));
				tar.putArchiveEntry(entry);
				Files.copy(file, tar);
				tar.closeArchiveEntry();
			}
			tar.finish();
		}
		return bytes.toByteArray();
	}
}
